"""What each command's result means for its exit code: every rule in one place.

Each function takes what a workflow returned and says which kind of `Outcome` it is; the
command line turns the kind into the exit code (`segaudit.cli.common.EXIT_CODES`).
"""

from __future__ import annotations

from omegaconf import DictConfig

from segaudit.core.outcome import Outcome, flagged_if
from segaudit.data.check import CheckReport
from segaudit.diagnostics.suspects import too_many_flagged
from segaudit.diagnostics.verdict import HEALTHY, INCONCLUSIVE, PIPELINE_FAULT, SPATIAL_SHORTCUT

VERDICT_OUTCOMES = {
    HEALTHY: Outcome.OK,
    PIPELINE_FAULT: Outcome.FLAGGED,
    SPATIAL_SHORTCUT: Outcome.FLAGGED,
    INCONCLUSIVE: Outcome.INCONCLUSIVE,
}


def diagnose_outcome(record: dict) -> Outcome:
    """A diagnose is what its verdict says: HEALTHY `OK`, INCONCLUSIVE `INCONCLUSIVE`,
    PIPELINE_FAULT and SPATIAL_SHORTCUT `FLAGGED`."""
    return VERDICT_OUTCOMES[record["verdict"]]


def audit_outcome(record: dict) -> Outcome:
    """An audit is `FLAGGED` when one of its red flags fired."""
    return flagged_if(record["audit"]["red_flags"])


def validate_outcome(result: dict) -> Outcome:
    """Validation is `FLAGGED` when a gate failed (a skipped gate fails nothing)."""
    return flagged_if(not result["passed"])


def inventory_outcome(results: list[dict]) -> Outcome:
    """An inventory is `FLAGGED` when a row failed or a model's audit raised a red flag."""
    return flagged_if(any(r["status"] == "failed" or r.get("red_flags") for r in results))


def sweep_outcome(results: list[dict]) -> Outcome:
    """A sweep is `FLAGGED` when one of its runs failed."""
    return flagged_if(any(r["status"] == "failed" for r in results))


def suspects_outcome(record: dict, gate: DictConfig) -> Outcome:
    """Pair scoring is `FLAGGED` when the training pairs flagged exceed the val pairs
    flagged by more than `gate.suspects_max_share` points."""
    return flagged_if(too_many_flagged(record, gate))


def scope_outcome(result: dict) -> Outcome:
    """A scope analysis is `FLAGGED` when results barely depend on the strategy or dataset."""
    return flagged_if(result["systematic"])


def data_check_outcome(report: CheckReport) -> Outcome:
    """A data check with errors is `BAD_INPUT`: the dataset cannot be used as it is."""
    return Outcome.BAD_INPUT if report.errors else Outcome.OK
