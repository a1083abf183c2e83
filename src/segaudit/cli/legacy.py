"""The spellings of 0.x that moved, still accepted for one release with a one-line note:
`audit --inventory F` is `audit inventory F`, `report --html F` is `report html F`,
`retrain --tier 2` is `retrain retrain.tier=2`, and so on."""

from __future__ import annotations

import shlex

import click
from typer.core import TyperGroup

from segaudit.cli.common import err

# group -> (old option, its new subcommand, whether the option takes a value), by precedence
MOVED_OPTIONS = {
    "audit": (
        ("--inventory", "inventory", True),
        ("--export-inputs", "export-inputs", True),
        ("--predictions", "score-predictions", True),
    ),
    "report": (
        ("--classes", "classes", True),
        ("--html", "html", True),
        ("--diagnose", "diagnose", True),
        ("--scope", "scope", False),
        ("--compare", "compare", True),
        ("--plots", "plots", True),
    ),
}
# a bare `segaudit GROUP ARGS`: the subcommand it means, and whether that spelling is old
DEFAULTS = {"audit": ("model", True), "report": ("table", False)}
# retrain's old flags -> the config key each now sets (None: a flag without a value)
RETRAIN_FLAGS = {
    "--tier": "retrain.tier",
    "--from-gate": "retrain.from_gate",
    "--models": "retrain.models",
    "--datasets": "retrain.datasets",
    "--seeds": "retrain.seeds",
    "--jobs": "retrain.jobs",
    "--strategy": "retrain.strategy",
    "--init-from": "retrain.init_from",
    "--launcher": "launcher",
    "--freeze-encoder": None,
}
_LISTS = ("retrain.models", "retrain.datasets", "retrain.seeds")
_TEXT = ("retrain.from_gate", "retrain.strategy", "retrain.init_from")


def _note(group: str, old: list[str], new: list[str]) -> None:
    err.print(
        f"note: `segaudit {group} {shlex.join(old)}` is now `segaudit {group} {shlex.join(new)}`; "
        "the old spelling goes in the next release",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def _take(args: list[str], option: str, takes_value: bool) -> tuple[list[str], str | None] | None:
    """`args` without `option` (and its value), and the value; None when absent."""
    for i, arg in enumerate(args):
        if arg == "--":
            return None
        if arg == option and (not takes_value or i + 1 < len(args)):
            return args[:i] + args[i + 1 + takes_value :], args[i + 1] if takes_value else None
        if takes_value and arg.startswith(option + "="):
            return args[:i] + args[i + 1 :], arg.split("=", 1)[1]
    return None


def route(group: str, args: list[str], commands: set[str]) -> list[str]:
    """The new spelling of `segaudit GROUP ARGS` (unchanged when it is already new)."""
    if args and (args[0] in commands or args[0] in ("-h", "--help")):
        return args
    for option, command, takes_value in MOVED_OPTIONS.get(group, ()):
        taken = _take(args, option, takes_value)
        if taken is not None:
            rest, value = taken
            new = [command, *([value] if takes_value else []), *rest]
            _note(group, args, new)
            return new
    command, old = DEFAULTS[group]
    if old and not args:
        return args  # `segaudit audit` alone: the group's help
    if old:
        _note(group, args, [command, *args])
    return [command, *args]


def retrain_overrides(args: list[str]) -> list[str]:
    """`retrain`'s arguments with its old flags written as the `retrain.*` overrides they set."""
    new, i = [], 0
    while i < len(args):
        arg, value = args[i], None
        name = arg.split("=", 1)[0]
        if name not in RETRAIN_FLAGS:
            new.append(arg)
            i += 1
            continue
        key = RETRAIN_FLAGS[name]
        if key is None:
            new.append("retrain.freeze_encoder=true")
            i += 1
            continue
        if "=" in arg:
            value, i = arg.split("=", 1)[1], i + 1
        elif i + 1 < len(args):
            value, i = args[i + 1], i + 2
        else:
            raise click.UsageError(f"Option '{name}' requires an argument.")
        if key in _LISTS:
            value = "[" + ",".join(v.strip() for v in value.split(",")) + "]"
        elif key in _TEXT:
            value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        new.append(f"{key}={value}")
    if new != args:
        _note("retrain", args, new)
    return new


class RoutedGroup(TyperGroup):
    """A command group that takes its 0.x spellings too (see `route`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, route(self.name, list(args), set(self.commands)))


class RootGroup(TyperGroup):
    """The `segaudit` group: rewrites `retrain`'s old flags before Click reads them."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = list(args)
        if args and args[0] == "retrain" and not {"-h", "--help"} & set(args):
            args = ["retrain", *retrain_overrides(args[1:])]
        return super().parse_args(ctx, args)
