"""Eval-only audit of a trained checkpoint."""

import pytest
import torch
from typer.testing import CliRunner

from segaudit.audit import audit
from segaudit.cli import app
from segaudit.checkpoints import load_for_eval
from segaudit.config import compose, load_group_option
from segaudit.data import build_dataset, eval_loader
from segaudit.data.conditions import DeviceImages
from segaudit.engine import train
from segaudit.evaluation import predict_labels
from segaudit.runs import CHECKPOINT, load_table

runner = CliRunner()


def _agreement_by_hand(overrides) -> float:
    """Percent of labelled val pixels where the predictions on real and on (the audit's
    seeded) noise input agree, counted directly."""
    cfg = compose(overrides)
    model = load_for_eval(cfg, "model", torch.device("cpu"))
    dcfg = model.saved.dataset
    noise = DeviceImages(load_group_option("condition", "noise"), dcfg.transform.mean, dcfg.transform.std,
                         torch.device("cpu"), seeded=True)
    same = labelled = 0
    with torch.inference_mode():
        for images, target in eval_loader(build_dataset(dcfg, "val", train=False), int(cfg.train.eval_batch_size)):
            real = predict_labels(model.model, images, torch.device("cpu"), None)
            noisy = predict_labels(model.model, noise(images), torch.device("cpu"), None)
            valid = target != int(dcfg.ignore_index)
            same += int((real == noisy)[valid].sum())
            labelled += int(valid.sum())
    return 100.0 * same / labelled


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
    assert block["agreement_real_noise"] == pytest.approx(_agreement_by_hand(tiny))
    row = load_table(runs_root).set_index("run_id").loc[record["run_id"]]
    assert row.phase == "audit" and row.miou == pytest.approx(block["miou"]["real"])
    assert row.noise_miou == pytest.approx(block["miou"]["noise"])


def test_audit_by_checkpoint_path_via_cli(trained, tiny, runs_root):
    result = runner.invoke(app, ["audit", str(runs_root / "model" / CHECKPOINT), *tiny])
    # Two iterations of training: the model scores below the prior, and the audit says so.
    assert result.exit_code == 1, result.output
    assert "content gain" in result.stdout and "shuffled" in result.stdout
    assert "RED FLAG: real-image mIoU" in result.stdout and "no better than its analytic prior" in result.stdout


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
