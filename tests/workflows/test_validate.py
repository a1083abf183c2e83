"""Phase-3 validation gates: the gate logic over fixed numbers, the perturbations against
the imagecorruptions package itself, and `segaudit validate` as a user runs it."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from imagecorruptions import corrupt
from omegaconf import OmegaConf
from typer.testing import CliRunner

from segaudit.cli import app
from segaudit.core.config import compose, load_group_option
from segaudit.core.errors import ConfigError, DataError
from segaudit.data import build_dataset
from segaudit.data.synthetic import SynthSpec, write_synthetic
from segaudit.measure.evaluation import predict_labels
from segaudit.measure.metrics import ConfusionMatrix
from segaudit.runs.records import load_table
from segaudit.train.engine import train
from segaudit.workflows.audit import audit
from segaudit.workflows.validate import (
    corrupt_batch,
    cross_dataset_gate,
    generalization_gate,
    noise_gate,
    perturbations,
    robustness_gates,
)

runner = CliRunner()
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


# --------------------------------------------------------------------------- gate logic
def test_noise_gate_default_preset_is_relative_to_real():
    gate = load_group_option("gate", "default")  # noise_eval_ratio 0.5, no absolute cut
    assert noise_gate(70.0, 34.9, gate).passed is True
    assert noise_gate(70.0, 35.0, gate).passed is False  # "< 0.5 x real": the boundary fails
    assert noise_gate(70.0, 10.0, gate).threshold == "< 0.5 x real = 35.0"


def test_noise_gate_seed_preset_is_the_literal_10():
    gate = load_group_option("gate", "seed")
    assert noise_gate(70.0, 9.99, gate).passed is True
    assert noise_gate(70.0, 10.0, gate).passed is False
    assert noise_gate(70.0, 10.6, gate).result == "FAIL"  # the healthy synthetic model's value
    off = OmegaConf.merge(gate, {"noise_eval_max": None, "noise_eval_ratio": None})
    assert noise_gate(70.0, 50.0, off).result == "SKIP"


def test_robustness_gates_boundaries_are_inclusive():
    rcfg = OmegaConf.create({"min_agreement": 95.0, "max_miou_drop": 5.0})
    gates = robustness_gates(
        60.0,
        {
            "edge": {"agreement": 95.0, "miou": 55.0},  # exactly on both thresholds
            "unstable": {"agreement": 94.99, "miou": 60.0},  # prediction changes too much
            "dropping": {"agreement": 99.0, "miou": 54.99},  # mIoU falls too far
            "better": {"agreement": 96.0, "miou": 62.0},  # a gain is not a drop
        },
        rcfg,
    )
    assert [g.result for g in gates] == ["PASS", "FAIL", "FAIL", "PASS"]
    assert gates[0].value == 95.0 and "drop +5.00" in gates[0].detail
    assert "drop -2.00" in gates[3].detail


def test_generalization_gate():
    assert generalization_gate(50.0, 45.0, 5.0).passed is True
    failed = generalization_gate(50.0, 44.9, 5.0)
    assert failed.passed is False and failed.value == pytest.approx(5.1)
    assert generalization_gate(44.9, 50.0, 5.0).passed is False  # the gap counts both ways
    skipped = generalization_gate(50.0, None, 5.0, "no labelled test split")
    assert skipped.result == "SKIP" and skipped.detail == "no labelled test split"


def test_cross_dataset_gate_uses_the_sample_std():
    varied = pd.Series({"a": 40.0, "b": 60.0, "c": 55.0})
    gate = cross_dataset_gate(varied, 10.0)
    assert gate.value == pytest.approx(np.std([40.0, 60.0, 55.0], ddof=1))
    assert gate.passed is True  # 10.41 > 10
    flat = cross_dataset_gate(pd.Series({"a": 40.0, "b": 50.0}), 10.0)
    assert flat.value == pytest.approx(7.0711, abs=1e-4) and flat.passed is False
    lonely = cross_dataset_gate(pd.Series({"a": 40.0, "b": float("nan")}), 10.0)
    assert lonely.result == "SKIP" and "--cross" in lonely.detail


# --------------------------------------------------------------------------- perturbations
def test_corrupt_batch_matches_imagecorruptions_on_the_same_pixels():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(2, 32, 40, 3), dtype=np.uint8)
    normalised = (
        torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)
    ) / torch.tensor(STD).view(1, 3, 1, 1)
    before = np.random.get_state()[1].copy()
    ours = corrupt_batch(normalised, "gaussian_noise", 2, MEAN, STD, seed=7)
    assert np.array_equal(np.random.get_state()[1], before)  # the caller's RNG is untouched
    np.random.seed(7)
    reference = np.stack([corrupt(img, corruption_name="gaussian_noise", severity=2) for img in raw])
    back = (ours * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255
    assert np.abs(back.permute(0, 2, 3, 1).numpy() - reference).max() < 0.01
    again = corrupt_batch(normalised, "gaussian_noise", 2, MEAN, STD, seed=7)
    assert torch.equal(ours, again)  # repeatable audits
    with pytest.raises(DataError, match="at least 32x32 pixels.*24x24"):
        corrupt_batch(normalised[..., :24, :24], "gaussian_noise", 2, MEAN, STD, seed=7)


def test_perturbation_plan_and_bad_names():
    rcfg = compose([]).gate.validate.robustness
    plan = perturbations(rcfg)
    assert plan[0] == ("gaussian sigma=0.05", "gaussian", 0.05)
    assert len(plan) == 1 + len(rcfg.corruptions) * len(rcfg.severities)
    with pytest.raises(ConfigError, match="unknown fog_machine.*imagecorruptions has: gaussian_noise"):
        perturbations(OmegaConf.merge(rcfg, {"corruptions": ["fog_machine"]}))
    with pytest.raises(ConfigError, match="outside 1..5"):
        perturbations(OmegaConf.merge(rcfg, {"severities": [0, 6]}))


# --------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def synth_with_test(tmp_path_factory):
    """Two tiny datasets with the same classes: one with a labelled test split."""
    base = tmp_path_factory.mktemp("validate")
    main = write_synthetic(base / "main", SynthSpec(n_train=16, n_val=8, n_test=8, size=32))
    other = write_synthetic(base / "other", SynthSpec(n_train=8, n_val=8, size=32, seed=5))
    renamed = write_synthetic(base / "renamed", SynthSpec(n_train=8, n_val=8, size=32, seed=6))
    meta = (renamed / "dataset.yaml").read_text().replace("- road", "- street")
    (renamed / "dataset.yaml").write_text(meta)
    return main, other, renamed


@pytest.fixture
def setup(synth_with_test, tmp_path):
    main, other, renamed = synth_with_test
    runs = tmp_path / "runs"
    common = [
        "dataset=folder",
        "dataset.transform.crop=[32,32]",
        "dataset.cache_in_memory=true",
        "train.iters=3",
        "train.batch_size=2",
        "train.eval_batch_size=4",
        "train.progress=false",
        f"paths.runs={runs}",
        "gate.validate.robustness.severities=[1]",
        "gate.validate.robustness.corruptions=[gaussian_noise,brightness]",
    ]
    train(compose(common + [f"dataset.root={main}", "run_id=on-main", "eval_also=[noise]"]))
    return common, runs, main, other, renamed


LENIENT = [
    "gate.noise_eval_ratio=null",
    "gate.noise_eval_max=101",
    "gate.validate.robustness.min_agreement=0",
    "gate.validate.robustness.max_miou_drop=100",
    "gate.validate.generalization.max_gap=100",
    "gate.validate.cross_dataset.spread_min=-1",
]


def test_validate_prints_every_gate_and_records_the_run(setup):
    common, runs, main, other, renamed = setup
    result = runner.invoke(
        app, ["validate", "on-main", *common, *LENIENT, "--cross", f"folder={other}", "--cross", f"folder={renamed}"]
    )
    assert result.exit_code == 0, result.output
    for row in (
        "noise input fails",
        "robust: gaussian sigma=0.05",
        "robust: gaussian_noise s1",
        "robust: brightness s1",
        "generalization",
        "cross-dataset",
    ):
        assert row in result.stdout
    assert "FAIL" not in result.stdout and "PASS: 6 passed, 0 failed, 0 skipped" in result.stdout
    assert "cross-dataset mIoU" in result.stdout and "n/a" in result.stdout  # renamed classes
    table = load_table(runs)
    row = table[table.phase == "validate"].iloc[0]
    assert row.gates == "6/6" and row.strategy == "baseline"
    record = json.loads((runs / row.run_id / "record.json").read_text())
    block = record["validate"]
    assert block["test"]["miou"] is not None
    gap = abs(record["metrics"]["miou"] - block["test"]["miou"])
    assert block["gates"][-2]["value"] == pytest.approx(gap)
    cross = block["cross_dataset"]
    assert cross["folder:renamed"] is None and cross["folder:main"] == record["metrics"]["miou"]
    assert cross["folder:other"] is not None


def test_validate_repeats_the_audit_numbers(setup):
    common, runs, *_ = setup
    measured = runner.invoke(app, ["validate", "on-main", *common])
    record = next(
        r for r in map(lambda p: json.loads(p.read_text()), runs.glob("*/record.json")) if r["phase"] == "validate"
    )
    assert measured.exit_code == (0 if record["validate"]["passed"] else 1), measured.output
    audited = audit(compose(common), "on-main")["audit"]["miou"]
    # The same seeded noise and the same images: both commands measure the same model alike.
    assert record["metrics_by_condition"]["real"]["miou"] == pytest.approx(audited["real"])
    assert record["metrics_by_condition"]["noise"]["miou"] == pytest.approx(audited["noise"])


def test_a_failing_gate_exits_1_and_skips_are_explained(setup, tmp_path):
    common, runs, main, *_ = setup
    strict = [
        *LENIENT[:-2],
        "gate.validate.robustness.min_agreement=100.1",
        "gate.validate.generalization.split=holdout",
    ]
    result = runner.invoke(app, ["validate", "on-main", *common, *strict])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout
    assert "generalization skipped: dataset.layout has no 'holdout' split" in result.stdout
    assert "cross-dataset skipped" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "nope: neither a checkpoint file nor a run id"),
        (["on-main", "--cross", "atlantis=/x"], "--cross atlantis=/x: "),
        (["on-main", "gate.validate.robustness.corruptions=[fog_machine]"], "unknown fog_machine"),
    ],
)
def test_bad_input_is_one_line(setup, args, message):
    common, runs, *_ = setup
    before = sorted(p.name for p in runs.iterdir())
    result = runner.invoke(app, ["validate", *common, *args])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in runs.iterdir()) == before  # nothing written


def test_cross_dataset_file_maps_another_label_space(setup, tmp_path):
    common, runs, main, other, renamed = setup
    from segaudit.data.synthetic import CLASS_NAMES

    mapped = tmp_path / "renamed_as_synthetic.yaml"
    config = OmegaConf.merge(load_group_option("dataset", "folder"), {"name": "renamed", "class_names": CLASS_NAMES})
    OmegaConf.save(config, mapped)
    result = runner.invoke(app, ["validate", "on-main", *common, *LENIENT, "--cross", f"{mapped}={renamed}"])
    assert result.exit_code == 0, result.output
    record = next(
        json.loads(p.read_text()) for p in runs.glob("*/record.json") if "validate" in json.loads(p.read_text())
    )
    assert record["validate"]["cross_dataset"]["renamed"] is not None  # scored, not n/a
    missing = runner.invoke(app, ["validate", "on-main", *common, "--cross", f"{tmp_path}/no.yaml=/x"])
    assert missing.exit_code == 2 and "no.yaml not found" in missing.stderr


def test_test_split_without_labelled_pixels_is_skipped(setup, tmp_path):
    import shutil

    from PIL import Image

    from segaudit.models.checkpoints import load_for_eval
    from segaudit.workflows.validate import score_split

    common, runs, main, *_ = setup
    copy = shutil.copytree(main, tmp_path / "unlabelled")
    for mask in (copy / "masks" / "test").iterdir():
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(mask)
    cfg = compose(common)
    trained = load_for_eval(cfg, "on-main", torch.device("cpu"))
    dcfg = OmegaConf.merge(trained.saved.dataset, {"root": str(copy)})
    metrics, why = score_split(trained.model, dcfg, "test", torch.device("cpu"), None, 4)
    assert metrics is None and why == "the test masks hold no labelled pixels"
    labelled, why = score_split(trained.model, trained.saved.dataset, "test", torch.device("cpu"), None, 4)
    assert labelled is not None and why == ""
    # The same model scored one test image at a time, with no batching or loader in between.
    by_hand = ConfusionMatrix(int(dcfg.num_classes), int(dcfg.ignore_index))
    test_set = build_dataset(trained.saved.dataset, "test", train=False)
    with torch.inference_mode():
        for index in range(len(test_set)):
            image, mask = test_set[index]
            by_hand.update(predict_labels(trained.model, image[None], torch.device("cpu"), None), mask[None])
    assert labelled["miou"] == pytest.approx(by_hand.compute()["miou"])
    assert score_split(trained.model, dcfg, "holdout", torch.device("cpu"), None, 4) == (
        None,
        "dataset.layout has no 'holdout' split",
    )
