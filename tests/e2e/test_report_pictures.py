"""`segaudit report plots` after a whole diagnose draws every kind of picture (`slow`)."""

import pytest
from drawn import kind, not_blank
from typer.testing import CliRunner

from expected import exit_code_follows_the_verdict
from segaudit.cli import app

runner = CliRunner()


@pytest.mark.slow  # a second diagnose; test_audit_and_diagnose_plots draws the same kinds
def test_report_plots_draw_every_kind_after_a_diagnose(tiny, runs_root, tmp_path):
    result = runner.invoke(app, ["diagnose", *tiny, "--no-noise-train", "--no-suspects", "diagnose.tier1=false"])
    exit_code_follows_the_verdict(result, runs_root)
    out = tmp_path / "report"
    report = runner.invoke(app, ["report", "plots", str(out), *tiny])
    assert report.exit_code == 0, report.output
    kinds = set(map(kind, out.rglob("*.png")))
    assert {"evidence", "learning_curves", "miou_by_condition", "samples", "prior_all"} <= kinds
    for png in out.rglob("*.png"):
        not_blank(png)
