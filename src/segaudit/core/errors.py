"""User-facing errors: the CLI prints their message as one line and exits with code 2."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colours some libraries put in messages


class SegauditError(Exception):
    """Bad input from the user (config, data, checkpoint); never a bug in segaudit."""

    exit_code = 2


class ConfigError(SegauditError):
    """An override or config value that cannot be used."""


class DataError(SegauditError):
    """A dataset that cannot be read as configured."""


class TrainingFailed(Exception):
    """A run stopped on its own (e.g. a non-finite loss); its record says `failed`."""

    exit_code = 1


def first_line(error: BaseException) -> str:
    """The first non-empty line along an error's cause chain (its type name when every
    message is empty): what a one-line report shows of a third-party exception."""
    err: BaseException | None = error
    while err is not None:
        lines = _ANSI.sub("", str(err)).strip().splitlines()
        if lines:
            return lines[0]
        err = err.__cause__ or err.__context__
    return type(error).__name__
