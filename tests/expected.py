"""The exit code a command owes, derived from the record it wrote (not accepted as
"0 or 1"): 1 when an audit raised a red flag or a validate gate failed, else 0."""

import json
from pathlib import Path

from segaudit.cli.common import EXIT_CODES
from segaudit.workflows.outcomes import VERDICT_OUTCOMES as OUTCOMES


def read(runs_root: Path, run_id: str) -> dict:
    return json.loads((Path(runs_root) / run_id / "record.json").read_text())


def audit_exit(record: dict) -> int:
    return 1 if record["audit"]["red_flags"] else 0


def validate_exit(records: list[dict]) -> int:
    return 1 if any(g["passed"] is False for r in records for g in r["validate"]["gates"]) else 0


def validate_records(runs_root: Path) -> list[dict]:
    return [
        r
        for r in (json.loads(p.read_text()) for p in Path(runs_root).glob("*/record.json"))
        if r.get("phase") == "validate"
    ]


def suspects_exit(runs_root: Path, max_share: float) -> int:
    """1 when the training pairs flagged exceed the val pairs flagged by over `max_share` %.

    The cross-fitting fold runs carry `phase=suspects` too; the summary record alone holds
    the `suspects` block.
    """
    (record,) = [
        r
        for r in (json.loads(p.read_text()) for p in Path(runs_root).glob("*/record.json"))
        if r.get("phase") == "suspects" and "suspects" in r
    ]
    shares = record["suspects"]
    return 1 if shares["train"]["share"] - shares["val"]["share"] > max_share else 0


def exit_code_follows_the_verdict(result, runs_root):
    """2-iteration models may get any verdict; the exit code must be the verdict's."""
    gate = next(
        r for r in map(lambda p: json.loads(p.read_text()), runs_root.glob("*/record.json")) if r.get("verdict")
    )
    assert result.exit_code == EXIT_CODES[OUTCOMES[gate["verdict"]]], result.output
    return gate


def audit_records(runs: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in runs.glob("*/record.json")]
    return [r for r in records if r["phase"] == "audit"]


def assert_check_matches_audit(result, model_folder: Path, settings: list[str], runs_root: Path, strategy: str):
    """A training-time content check (`segaudit.integrations`) measured what `segaudit audit
    model` measures on the saved model and the same val images, and its fit-end record
    lands in `segaudit report table`."""
    import pytest
    from typer.testing import CliRunner

    from segaudit.cli import app

    runner, audits = CliRunner(), model_folder.parent / "audit"
    audited = runner.invoke(app, ["audit", "model", str(model_folder), f"paths.runs={audits}", *settings])
    (record,) = [json.loads(p.read_text()) for p in audits.glob("*/record.json")]
    assert audited.exit_code == audit_exit(record), audited.output
    for name, value in record["audit"]["miou"].items():
        assert result.findings.miou[name] == pytest.approx(value, abs=0.01)
    content = record["audit"]["evidence"]["information"]["content"]
    assert result.scalars()["segaudit/content_bits"] == pytest.approx(content["value"], abs=1e-4)
    table = runner.invoke(app, ["report", "table", f"paths.runs={runs_root}", "--format", "json"])
    assert table.exit_code == 0, table.output
    (row,) = json.loads(table.stdout)
    assert row["phase"] == "audit" and row["strategy"] == strategy


NO_ALIGNED_CONTENT = ("another image's pixels",)
# A crop shared by image and mask leaves the own image a sliver of help over another's:
# the model stays at the prior (rule 2) and location carries its score (rule 3); which
# counts first varies with the thread count (CPU convolutions are not bit-reproducible).
SHARED_CROP = ("no more than the analytic prior", "where classes usually are")


def assert_flagged_once_learning_stops(results, because=NO_ALIGNED_CONTENT, doublings: int = 3):
    """A training-time content check of a broken pipeline (masks on other images): the
    audit's flags are there from the first check but held while the model learns where
    classes sit and for at least `doublings` of training after; then a flag saying one of
    `because` counts, and the run stopped there."""
    flagged = [i for i, r in enumerate(results) if r.flags]
    assert flagged, [(r.step, r.state, r.held) for r in results]
    first = results[flagged[0]]
    assert len(results) == flagged[0] + 1  # stopped at the first check whose flags count
    assert results[0].held and not results[0].flags
    learned = next(r.step for r in results if r.location_part >= 0.9)
    assert first.step >= 2**doublings * learned, (first.step, learned)
    assert any(text in flag for text in because for flag in first.flags), first.flags
