"""The `segaudit` command line (Typer): one module per command group, each command
composing the config and calling one workflow function."""

from segaudit.cli.app import app, main

__all__ = ["app", "main"]
