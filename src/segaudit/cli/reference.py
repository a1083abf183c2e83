"""The command reference as Markdown, generated from the Typer app itself (Typer's own
docs generator), so the manual's reference cannot drift from `segaudit --help`."""

from __future__ import annotations

import re

import typer
from typer.cli import MARKUP_MODE_KEY, get_docs_for_click

from segaudit.cli.app import app


def command_reference() -> str:
    """Every command and subcommand with its usage, arguments, options and examples."""
    command = typer.main.get_command(app)
    ctx = typer.Context(command, obj={MARKUP_MODE_KEY: "rich"})
    text = get_docs_for_click(obj=command, ctx=ctx, name="segaudit", title="Command reference")
    intro = (
        "Generated from the Typer app at every `make docs`: the same text as "
        "`segaudit COMMAND --help`. Every command also takes Hydra overrides "
        "(`key=value`, `group=option`); `paths.runs=DIR` chooses the runs folder.\n\n"
    )
    title, rest = text.split("\n", 1)
    return f"{title}\n\n{intro}{_examples_as_code(rest.lstrip())}"


def _examples_as_code(text: str) -> str:
    """The epilogs' example lines (`  segaudit ...`, rich markup) as fenced shell blocks."""
    lines = re.sub(r"\[/?(bold|dim)?\]", "", text).replace("\\[", "[").split("\n")
    out: list[str] = []
    in_block = False
    for i, line in enumerate(lines):
        example = line.startswith("  segaudit ")
        if example and not in_block:
            out.append("```bash")
            in_block = True
        if in_block and not example:
            following = next((nxt for nxt in lines[i + 1 :] if nxt.strip()), "")
            if not line.strip() and following.startswith("  segaudit "):
                continue  # the blank lines between examples
            out.append("```")
            in_block = False
        out.append(line[2:] if example else line)
    if in_block:
        out.append("```")
    return "\n".join(out)
