"""Eval-only audit of a trained checkpoint."""

import json

import pytest
import torch
from typer.testing import CliRunner

from segaudit.cli import app
from segaudit.core.config import compose, load_group_option
from segaudit.data import build_dataset, eval_loader
from segaudit.data.conditions import DeviceImages, derangement
from segaudit.diagnostics.audit import ConditionInputs, StandIns, measure_batches
from segaudit.measure.evaluation import predict_labels
from segaudit.measure.information import ImageScores
from segaudit.models.checkpoints import load_for_eval
from segaudit.runs.records import CHECKPOINT, load_table
from segaudit.train.engine import train
from segaudit.workflows.audit import audit

runner = CliRunner()


def _agreement_by_hand(overrides) -> float:
    """Percent of labelled val pixels where the predictions on real and on (the audit's
    seeded) noise input agree, counted directly."""
    cfg = compose(overrides)
    model = load_for_eval(cfg, "model", torch.device("cpu"))
    dcfg = model.saved.dataset
    noise = DeviceImages(
        load_group_option("condition", "noise"),
        dcfg.transform.mean,
        dcfg.transform.std,
        torch.device("cpu"),
        seeded=True,
    )
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
    result = runner.invoke(app, ["audit", "model", str(runs_root / "model" / CHECKPOINT), *tiny])
    # Two iterations of training: the model scores below the prior, and the audit says so.
    assert result.exit_code == 1, result.output
    assert "content gain" in result.stdout and "shuffled" in result.stdout
    assert "RED FLAG: real-image predictions explain no more than the analytic prior" in result.stdout
    record = load_table(runs_root).query("phase == 'audit'").iloc[-1]
    block = json.loads((runs_root / record.run_id / "record.json").read_text())["audit"]
    content = block["evidence"]["information"]["content"]
    assert content["low"] <= content["value"] <= content["high"] and content["high"] < 0


def _found(content, versus, retained, bits=True) -> dict:
    est = lambda v: {"value": v[0], "low": v[1], "high": v[2]}  # noqa: E731
    return {
        "bits": bits,
        "information": {"content": est(content)} if bits else None,
        "versus": {"shuffled": {"bits": est(versus) if bits else None, "miou": est(versus)}},
        "noise_retained": est(retained) if bits else None,
        "miou_gain": est(content),
    }


def test_evidence_flags_follow_the_intervals():
    from segaudit.diagnostics.audit import evidence_flags

    gate = compose([]).gate
    miou = {"real": 23.0, "noise": 10.0, "blank": 5.0, "shuffled": 21.5}
    # 1.5 mIoU over the prior, but content significantly above zero in bits: no flag.
    assert evidence_flags(_found((0.05, 0.03, 0.07), (0.06, 0.04, 0.08), (0.5, 0.4, 0.6)), miou, 21.5, gate) == []
    # The same mIoU with content not above zero: at the prior.
    flags = evidence_flags(_found((0.01, -0.01, 0.03), (0.06, 0.04, 0.08), (0.5, 0.4, 0.6)), miou, 21.5, gate)
    assert len(flags) == 1 and "no more than the analytic prior" in flags[0]
    # Not better than on another image's pixels, and keeping most of it on noise.
    flags = evidence_flags(_found((0.05, 0.03, 0.07), (0.0, -0.02, 0.02), (0.9, 0.8, 1.0)), miou, 21.5, gate)
    assert len(flags) == 2 and "another image's pixels" in flags[0] and "on noise input it keeps" in flags[1]
    # Predictions only (no probabilities): the same questions on mIoU intervals.
    flags = evidence_flags(_found((1.5, -0.5, 3.5), (1.5, 0.5, 2.5), None, bits=False), miou, 21.5, gate)
    assert len(flags) == 1 and "not above the analytic prior" in flags[0]


def test_bad_checkpoints_are_one_line_errors(trained, tiny, runs_root, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((runs_root / "model" / CHECKPOINT).read_bytes()[:1000])
    other = torch.load(runs_root / "model" / CHECKPOINT, weights_only=True)
    other["config"]["model"]["encoder"] = "resnet34"  # weights of another architecture
    mismatched = tmp_path / "mismatched.pt"
    torch.save(other, mismatched)
    for target, expected in [
        (truncated, "unreadable checkpoint"),
        (mismatched, "weights do not fit"),
        ("no-such-run", "neither a checkpoint file nor a run id"),
    ]:
        result = runner.invoke(app, ["audit", "model", str(target), *tiny])
        assert result.exit_code == 2, result.output
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _conditions_of(model, images, masks, others, batches):
    """`measure_batches` of `model` over `images` in `batches` (lists of positions), the
    other images given by `others(index)`, with a count of forward passes."""
    calls = []

    def predict(x, size):
        calls.append(len(x))
        logits = model(x)
        return torch.nn.functional.interpolate(logits, size=tuple(size), mode="bilinear")

    inputs = ConditionInputs([0.5] * 3, [0.25] * 3, torch.device("cpu"))
    stream = ((torch.tensor(b), images[b], others(b), masks[b]) for b in batches)
    results, per_image = measure_batches(predict, stream, inputs, 3, 255, len(images))
    return results, per_image, calls


def test_shuffled_from_stand_ins_and_one_blank_pass_equal_predicting_each():
    """A model that reads the image (a 1x1 conv at 1/2 resolution): scoring each image's
    real prediction against the mask it stands in for gives the shuffled condition of
    predicting the other images again, and one blank pass per size gives every image's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.Conv2d(3, 3, 1)).eval()
    images = torch.randn(7, 3, 16, 16)
    masks = torch.randint(0, 3, (7, 16, 16))
    masks[0, :4] = 255
    others = derangement(7, 0)
    stands_for = torch.empty(7, dtype=torch.long)
    stands_for[torch.tensor(others)] = torch.arange(7)
    batches = [[0, 1, 2], [3, 4, 5], [6]]
    with torch.inference_mode():
        fresh = _conditions_of(model, images, masks, lambda b: images[[others[i] for i in b]], batches)
        reused = _conditions_of(model, images, masks, lambda b: StandIns(stands_for[b], masks[stands_for[b]]), batches)
    for name in ("real", "noise", "blank", "shuffled"):
        assert reused[0][name]["miou"] == pytest.approx(fresh[0][name]["miou"], abs=1e-9)
        for field_name in ("nll", "pixels", "tp", "gt", "pred"):
            got, want = getattr(reused[1][name], field_name), getattr(fresh[1][name], field_name)
            assert got == pytest.approx(want, rel=1e-6), (name, field_name)
    blank = ConditionInputs([0.5] * 3, [0.25] * 3, torch.device("cpu")).blank(images)
    every = ImageScores(3, 255, 7)
    with torch.inference_mode():
        logits = torch.nn.functional.interpolate(model(blank), size=(16, 16), mode="bilinear")
        every.update(torch.arange(7), logits, masks)
    assert reused[1]["blank"].nll == pytest.approx(every.compute().nll, rel=1e-6)
    # real + noise per batch, one blank pass, no shuffled pass; vs 4 passes per batch
    assert reused[2] == [3, 3, 1, 3, 3, 1, 1] and len(fresh[2]) == 3 * 4 - 2
