"""One table decides every exit code: each result kind maps to the code the docs promise."""

from omegaconf import OmegaConf

from segaudit.cli.common import EXIT_CODES
from segaudit.core.outcome import Outcome
from segaudit.data.check import CheckReport, Problem
from segaudit.workflows import outcomes


def _code(outcome: Outcome) -> int:
    return EXIT_CODES[outcome]


def test_every_outcome_has_the_documented_code():
    assert {o: EXIT_CODES[o] for o in Outcome} == {
        Outcome.OK: 0,
        Outcome.FLAGGED: 1,
        Outcome.BAD_INPUT: 2,
        Outcome.INCONCLUSIVE: 3,
    }


def test_verdicts():
    codes = {v: _code(outcomes.diagnose_outcome({"verdict": v})) for v in outcomes.VERDICT_OUTCOMES}
    assert codes == {"HEALTHY": 0, "PIPELINE_FAULT": 1, "SPATIAL_SHORTCUT": 1, "INCONCLUSIVE": 3}


def test_audits_validates_and_sweeps():
    assert _code(outcomes.audit_outcome({"audit": {"red_flags": []}})) == 0
    assert _code(outcomes.audit_outcome({"audit": {"red_flags": ["noise keeps 90%"]}})) == 1
    assert _code(outcomes.validate_outcome({"passed": True})) == 0
    assert _code(outcomes.validate_outcome({"passed": False})) == 1
    done = [{"status": "completed"}, {"status": "skipped"}]
    assert _code(outcomes.sweep_outcome(done)) == 0
    assert _code(outcomes.sweep_outcome([*done, {"status": "failed"}])) == 1
    assert _code(outcomes.inventory_outcome([{"status": "completed", "red_flags": 0}])) == 0
    assert _code(outcomes.inventory_outcome([{"status": "completed", "red_flags": 2}])) == 1
    assert _code(outcomes.inventory_outcome([{"status": "failed", "red_flags": None}])) == 1


def test_suspects_scope_and_data_check():
    gate = OmegaConf.create({"suspects_max_share": 10.0})
    shares = {"train": {"share": 25.0}, "val": {"share": 14.0}}
    assert _code(outcomes.suspects_outcome({"suspects": shares}, gate)) == 1  # 11 points over val
    shares["val"]["share"] = 15.0
    assert _code(outcomes.suspects_outcome({"suspects": shares}, gate)) == 0  # exactly 10: not more
    assert _code(outcomes.scope_outcome({"systematic": True})) == 1
    assert _code(outcomes.scope_outcome({"systematic": False})) == 0
    warning = Problem("val", "b.png", "EXIF orientation", error=False)
    clean = CheckReport(problems=[warning], summaries=[], alignment=None, bad_stems={})
    assert _code(outcomes.data_check_outcome(clean)) == 0
    error = Problem("train", "a.png", "unreadable")
    broken = CheckReport(problems=[warning, error], summaries=[], alignment=None, bad_stems={})
    assert _code(outcomes.data_check_outcome(broken)) == 2
