"""The unified loop: records, checkpoints, resume after SIGKILL, NaN handling."""

import numpy as np
import pytest
import torch

from segaudit.core.config import compose
from segaudit.core.errors import ConfigError, TrainingFailed
from segaudit.measure.information import PER_IMAGE_FILE, load_per_image
from segaudit.models import losses
from segaudit.models.checkpoints import load_checkpoint
from segaudit.runs.records import CHECKPOINT, read_record
from segaudit.train.engine import train


def test_record_and_checkpoint_contents(tiny, runs_root):
    cfg = compose(tiny + ["train.iters=4", "train.eval_at=[2]", "train.log_every=1", "strategy=mine", "seed=3"])
    record = train(cfg, command="segaudit train ...")
    run_dir = runs_root / record["run_id"]
    on_disk = read_record(run_dir)
    assert on_disk["status"] == "completed" and on_disk["step"] == 4
    assert [h["step"] for h in on_disk["history"]] == [2, 4]
    assert on_disk["metrics"]["miou"] == on_disk["history"][-1]["miou"]
    assert len(on_disk["metrics"]["iou"]) == 8
    for key in (
        "run_id",
        "command",
        "phase",
        "dataset",
        "model",
        "encoder",
        "loss",
        "train_condition",
        "eval_condition",
        "strategy",
        "seed",
        "timings",
        "throughput_ips",
        "versions",
        "device",
    ):
        assert key in on_disk, key
    assert (on_disk["strategy"], on_disk["seed"], on_disk["model"]) == ("mine", 3, "deeplabv3plus")
    assert [e["step"] for e in on_disk["train_log"]] == [1, 2, 3, 4]
    ckpt = load_checkpoint(run_dir / CHECKPOINT)
    assert {"model", "optimizer", "scheduler", "step", "rng", "config"} <= set(ckpt)
    assert ckpt["step"] == 4 and ckpt["config"]["run_id"] == record["run_id"]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "train.log").read_text()
    hidden = [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
    assert hidden == [".lock"]  # the (released) lock file; no temp files left


def test_interrupted_run_resumes_to_the_same_result(tiny, runs_root, monkeypatch):
    base = tiny + ["train.iters=6", "train.ckpt_every=2", "train.log_every=1"]
    reference = train(compose(base + ["run_id=straight"]))

    real_forward = losses.TieredLoss.forward
    calls = {"n": 0}

    def dies_at_step_5(self, *args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_forward(self, *args)

    monkeypatch.setattr(losses.TieredLoss, "forward", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(compose(base + ["run_id=bumpy"]))
    assert read_record(runs_root / "bumpy")["status"] == "failed"
    monkeypatch.setattr(losses.TieredLoss, "forward", real_forward)
    resumed = train(compose([f"paths.runs={runs_root}", "resume=bumpy"]))
    assert resumed["status"] == "completed" and resumed["step"] == 6
    # Same data order, same RNG: the resumed run ends where the straight one did.
    assert resumed["metrics"]["miou"] == pytest.approx(reference["metrics"]["miou"], abs=1e-9)
    a = load_checkpoint(runs_root / "straight" / CHECKPOINT)["model"]
    b = load_checkpoint(runs_root / "bumpy" / CHECKPOINT)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stages_train_exactly_the_uninterrupted_run(tiny, runs_root):
    """`stop_at` pauses a run at a stage under its full schedule; resuming it stage by
    stage ends bit-identical to one uninterrupted run, and its per-image scores are kept
    for every stage's evaluation."""
    base = tiny + ["train.iters=6", "train.ckpt_every=100"]
    reference = train(compose(base + ["run_id=straight", "train.eval_at=[2,4]"]))
    first = train(compose(base + ["run_id=staged"]), stop_at=2)
    assert first["status"] == "paused" and first["step"] == 2 and first["finished_at"] is None
    again = train(compose([f"paths.runs={runs_root}", "resume=staged"]), stop_at=2)  # already there
    assert again["step"] == 2 and [h["step"] for h in again["history"]] == [2]
    train(compose([f"paths.runs={runs_root}", "resume=staged"]), stop_at=4)
    done = train(compose([f"paths.runs={runs_root}", "resume=staged"]))
    assert done["status"] == "completed" and done["step"] == 6
    assert [h["step"] for h in done["history"]] == [h["step"] for h in reference["history"]]
    a = load_checkpoint(runs_root / "straight" / CHECKPOINT)["model"]
    b = load_checkpoint(runs_root / "staged" / CHECKPOINT)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    entries, stems = load_per_image(runs_root / "staged" / PER_IMAGE_FILE)
    assert sorted(entries) == ["2/real", "4/real", "6/real"] and len(stems) == 8
    straight, _ = load_per_image(runs_root / "straight" / PER_IMAGE_FILE)
    assert all(np.array_equal(entries[k].tp, straight[k].tp) for k in entries)
    assert entries["6/real"].miou() == pytest.approx(done["metrics"]["miou"])
    assert entries["6/real"].bits_per_pixel == pytest.approx(done["metrics"]["nll_bits"])


def test_auto_iters_are_for_diagnose_only(tiny):
    with pytest.raises(ConfigError, match="train.iters=auto: only `segaudit diagnose`"):
        train(compose(tiny + ["train.iters=auto"]))


def test_non_finite_loss_fails_the_run(tiny, runs_root, monkeypatch):
    monkeypatch.setattr(losses.TieredLoss, "cross_entropy", lambda self, logits, target: logits.sum() * float("nan"))
    with pytest.raises(TrainingFailed, match="loss became nan"):
        train(compose(tiny + ["run_id=nan"]))
    record = read_record(runs_root / "nan")
    assert record["status"] == "failed" and "nan" in record["error"]


def test_resume_of_unknown_run_is_a_config_error(tiny):
    with pytest.raises(ConfigError, match="no run with that id"):
        train(compose(tiny + ["resume=ghost"]))


def test_cross_entropy_ignores_all_ignore_crops():
    loss = losses.TieredLoss(ignore_index=255)
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    assert loss.cross_entropy(logits, torch.full((1, 2, 2), 255)).item() == 0.0
    target = torch.tensor([[[0, 1], [2, 255]]])
    expected = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    assert loss.cross_entropy(logits, target).item() == pytest.approx(expected.item())
    weights = losses.TieredLoss(ignore_index=255, class_weights=[1.0, 2.0, 3.0])
    expected = torch.nn.functional.cross_entropy(logits, target, ignore_index=255, weight=torch.tensor([1.0, 2.0, 3.0]))
    assert weights.cross_entropy(logits, target).item() == pytest.approx(expected.item())
