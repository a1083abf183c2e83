"""Eval-only audit of a trained checkpoint."""

import pytest
import torch
from typer.testing import CliRunner

from segaudit.audit import audit
from segaudit.cli import app
from segaudit.config import compose
from segaudit.engine import train
from segaudit.runs import CHECKPOINT, load_table

runner = CliRunner()


@pytest.fixture
def trained(tiny, runs_root):
    return train(compose(tiny + ["run_id=model", "eval_also=[noise,blank]", "strategy=mine"]))


def test_audit_matches_training_time_evaluation(trained, tiny, runs_root):
    record = audit(compose(tiny), "model")
    block = record["audit"]
    assert record["phase"] == "audit" and record["strategy"] == "mine"
    assert set(block["miou"]) == {"real", "noise", "blank", "shuffled"}
    # The same seeded noise, the same images: the audit repeats the run's own evaluation.
    for name in ("real", "noise", "blank"):
        assert block["miou"][name] == pytest.approx(trained["metrics_by_condition"][name]["miou"])
    assert block["content_gain"] == pytest.approx(block["miou"]["real"] - block["prior_miou"])
    assert 0.0 <= block["agreement_real_noise"] <= 100.0
    row = load_table(runs_root).set_index("run_id").loc[record["run_id"]]
    assert row.phase == "audit" and row.miou == pytest.approx(block["miou"]["real"])
    assert row.noise_miou == pytest.approx(block["miou"]["noise"])


def test_audit_by_checkpoint_path_via_cli(trained, tiny, runs_root):
    result = runner.invoke(app, ["audit", str(runs_root / "model" / CHECKPOINT), *tiny])
    assert result.exit_code == 0, result.output
    assert "content gain" in result.stdout and "shuffled" in result.stdout


def test_bad_checkpoints_are_one_line_errors(trained, tiny, runs_root, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((runs_root / "model" / CHECKPOINT).read_bytes()[:1000])
    other = torch.load(runs_root / "model" / CHECKPOINT, weights_only=True)
    other["config"]["model"]["encoder"] = "resnet34"  # weights of another architecture
    mismatched = tmp_path / "mismatched.pt"
    torch.save(other, mismatched)
    for target, expected in [(truncated, "unreadable checkpoint"), (mismatched, "weights do not fit"),
                             ("no-such-run", "neither a checkpoint file nor a run id")]:
        result = runner.invoke(app, ["audit", str(target), *tiny])
        assert result.exit_code == 2, result.output
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
