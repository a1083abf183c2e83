"""What every command shares: the two consoles, one-line errors, help texts, and the one
table from a result's kind (`Outcome`) to the exit code."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from segaudit.core.errors import SegauditError, TrainingFailed
from segaudit.core.outcome import Outcome

# Piped output has no terminal width to read; lay tables out for a 100-column terminal.
out = Console(width=None if sys.stdout.isatty() else 100)
err = Console(stderr=True)

OVERRIDES_HELP = "Hydra overrides, e.g. model=pspnet train.iters=300 paths.runs=DIR"
FACTORY_HELP = "package.module:function that builds the model the weights file is for."
TRUST_HELP = "Load TorchScript / torch.export (.pt2) models, which run their own code when loaded."
FORMAT_HELP = "table | json | csv | md"

# The exit code of every command, by what it found (a refused input raises SegauditError: 2).
EXIT_CODES = {Outcome.OK: 0, Outcome.FLAGGED: 1, Outcome.BAD_INPUT: 2, Outcome.INCONCLUSIVE: 3}


def finish(outcome: Outcome) -> None:
    """End the command with `outcome`'s exit code."""
    raise typer.Exit(EXIT_CODES[outcome])


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input ends in one line on stderr and exit code 2; a failed run in exit code 1."""
    try:
        yield
    except SegauditError as error:
        err.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None
    except TrainingFailed as error:
        err.print(f"[bold red]run failed:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(error.exit_code) from None


def command_line() -> str:
    """The command as typed, for the run record."""
    return shlex.join(["segaudit", *sys.argv[1:]])


def source_overrides(factory: str | None, trust_model: bool) -> list[str]:
    """The external-model flags as the config keys they set (`source.*`)."""
    return ([f"source.factory='{factory}'"] if factory else []) + (["source.trust=true"] if trust_model else [])


def show(rich_view, text_view: Callable[[], str], fmt: str) -> None:
    """The rich view on a terminal (`--format table`), else the text `text_view()` returns."""
    if fmt == "table":
        out.print(rich_view)
    else:
        typer.echo(text_view().rstrip("\n"))
