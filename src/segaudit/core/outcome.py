"""What a finished command found, in the four kinds its exit code tells apart.

Workflows say which kind their result is; the command line maps the kind to an exit code
through one table (`segaudit.cli.common.EXIT_CODES`), so every command exits the same way
for the same kind of finding.
"""

from __future__ import annotations

import enum


class Outcome(enum.Enum):
    """The kind of a finished command's result."""

    OK = "ok"  # nothing flagged: no red flag, every gate passed, HEALTHY
    FLAGGED = "flagged"  # a red flag, a failed gate or run, PIPELINE_FAULT / SPATIAL_SHORTCUT
    BAD_INPUT = "bad input"  # the input cannot be used (also every refused input: SegauditError)
    INCONCLUSIVE = "inconclusive"  # the evidence cannot decide yet (train longer)


def flagged_if(condition: object) -> Outcome:
    """`FLAGGED` when `condition` is true, else `OK`."""
    return Outcome.FLAGGED if condition else Outcome.OK
