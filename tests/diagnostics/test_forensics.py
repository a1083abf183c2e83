"""Forensics with known truth: split consistency, the class table, the pair scoring
(`segaudit suspects`, and diagnose using it) and the frozen-backbone probe."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion
from typer.testing import CliRunner

from expected import audit_exit, read
from scenes import write_band_and_square
from segaudit.cli import app
from segaudit.core.config import compose, load_group_option
from segaudit.data import prepare_dataset
from segaudit.data.synthetic import SynthSpec, write_synthetic
from segaudit.diagnostics.verdict import HEALTHY, PIPELINE_FAULT, Evidence, verdict
from segaudit.measure.consistency import split_consistency
from segaudit.measure.metrics import summarize
from segaudit.measure.prior import prior_map, score_map

runner = CliRunner()
DEFAULT = load_group_option("gate", "default")


def _rewrite_masks(root: Path, split: str, change) -> None:
    for path in sorted((root / "masks" / split).glob("*.png")):
        Image.fromarray(change(np.array(Image.open(path)))).save(path)


def _swap_ids(a: int, b: int):
    def change(mask: np.ndarray) -> np.ndarray:
        out = mask.copy()
        out[mask == a], out[mask == b] = b, a
        return out

    return change


def _flat(text: str) -> str:
    """Panel text without borders and line wraps."""
    return " ".join(text.replace("│", " ").split())


# --------------------------------------------------------------------------- split consistency
def test_score_map_equals_sklearn_over_the_label_maps():
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 4, size=(6, 5, 7))
    maps[0, 0, :3] = 255  # ignore pixels count nowhere
    counts = torch.stack([torch.from_numpy((maps == k).sum(0)) for k in range(4)])
    predicted = prior_map(counts)
    labelled = maps != 255
    expected = sk_confusion(maps[labelled], np.broadcast_to(predicted.numpy(), maps.shape)[labelled], labels=range(4))
    got = score_map(predicted, counts)
    assert got == summarize(torch.from_numpy(expected))
    assert predicted.tolist() == counts.argmax(0).tolist()


@pytest.fixture(scope="module")
def layout_roots(tmp_path_factory) -> dict[str, Path]:
    """The same 64 px scenes three times: clean, train masks flipped upside down, and
    val masks with road and sidewalk ids swapped."""
    base = tmp_path_factory.mktemp("layouts")
    clean = write_synthetic(base / "clean", SynthSpec(n_train=200, n_val=100, size=64, seed=3))
    flipped = Path(shutil.copytree(clean, base / "flipped"))
    _rewrite_masks(flipped, "train", lambda m: np.ascontiguousarray(m[::-1]))
    swapped = Path(shutil.copytree(clean, base / "swapped"))
    _rewrite_masks(swapped, "val", _swap_ids(0, 1))
    return {"clean": clean, "flipped": flipped, "swapped": swapped}


def _consistency(root: Path) -> dict:
    cfg = compose(["dataset=folder", f"dataset.root={root}"])
    return split_consistency(prepare_dataset(cfg.dataset, cfg.paths.cache), cfg.gate.split)


def test_split_consistency_is_quiet_on_clean_scenes(layout_roots):
    result = _consistency(layout_roots["clean"])
    assert result["consistent"] and not result["flagged"] and not result["explanations"]
    assert abs(result["train_prior_miou"] - result["val_prior_miou"]) < 3


def test_split_consistency_names_train_masks_flipped_upside_down(layout_roots):
    result = _consistency(layout_roots["flipped"])
    assert not result["consistent"]
    named = {f["class"] for f in result["flagged"]}
    assert {"sky", "road"} <= named  # the classes the flip moves the most
    assert "placement differs" in " ".join(f["why"] for f in result["flagged"])
    assert "flipped upside down" in result["explanations"][0]


def test_split_consistency_names_two_ids_swapped_in_val(layout_roots):
    result = _consistency(layout_roots["swapped"])
    assert {f["class"] for f in result["flagged"]} == {"road", "sidewalk"}
    assert "ids 0 (road) and 1 (sidewalk) look swapped" in result["explanations"][0]


def test_data_check_shows_the_disagreement_as_warnings(layout_roots, tmp_path):
    args = [
        "data",
        "check",
        "dataset=folder",
        f"dataset.root={layout_roots['swapped']}",
        "--no-probe",
        f"paths.cache={tmp_path}",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output  # a warning, not an error
    assert "train and val labels disagree" in _flat(result.output)
    assert "warning: train/val labels: road is" in result.output
    clean = runner.invoke(app, [*args[:3], f"dataset.root={layout_roots['clean']}", *args[4:]])
    assert "train and val labels agree" in _flat(clean.output)


# --------------------------------------------------------------------------- verdict rule
@pytest.mark.parametrize(
    "share,val_share,expected",
    [
        (10.0, None, HEALTHY),
        (10.1, None, PIPELINE_FAULT),
        (10.1, 0.0, PIPELINE_FAULT),
        (None, None, HEALTHY),
        (10.1, 0.2, HEALTHY),  # weak fold models flag clean val pairs too: only the excess counts
        (30.0, 19.9, PIPELINE_FAULT),
        (30.0, 20.0, HEALTHY),
    ],
)
def test_a_share_of_flagged_pairs_over_the_gate_is_a_pipeline_fault(share, val_share, expected):
    ev = Evidence(
        prior=20.0,
        real=60.0,
        shuffled=21.0,
        suspect_share=share,
        suspect_flagged=40,
        suspect_pairs=400,
        suspect_val_share=val_share,
    )
    name, reasons = verdict(ev, DEFAULT)
    assert name == expected
    if expected == PIPELINE_FAULT:
        assert any(f"40 of 400 training pairs ({share:.1f}%) look misaligned" in r for r in reasons)


# --------------------------------------------------------------------------- class table
@pytest.fixture(scope="module")
def band_run(tmp_path_factory) -> tuple[list[str], Path]:
    """A model trained on `band` (location only) and `square` (colour only) scenes, with
    noise evaluation; returns the overrides that reach its runs folder."""
    base = tmp_path_factory.mktemp("bands")
    root = write_band_and_square(base / "data", n_train=64, n_val=16)
    common = [
        "dataset=folder",
        f"dataset.root={root}",
        "dataset.cache_in_memory=true",
        f"paths.runs={base / 'runs'}",
        f"paths.cache={base / 'cache'}",
        "train.progress=false",
    ]
    result = runner.invoke(
        app,
        [
            "train",
            *common,
            "dataset.transform.crop=[32,32]",
            "dataset.transform.scale=[1.0,1.0]",
            "train.iters=40",
            "train.batch_size=8",
            "eval_also=[noise]",
            "run_id=bands",
        ],
    )
    assert result.exit_code == 0, result.output
    return common, base


def test_class_table_flags_the_location_only_class_and_not_the_textured_one(band_run, tmp_path):
    common, base = band_run
    result = runner.invoke(app, ["report", "classes", "bands", "--format", "json", *common])
    assert result.exit_code == 0, result.output
    rows = {r["class"]: r for r in json.loads(result.output)}
    # Hand-computed shares: the band is 8 of 32 rows, the square 8 x 8 of 32 x 32 pixels.
    for name, share in (("band", 25.0), ("square", 6.25), ("background", 68.75)):
        assert rows[name]["train_share"] == pytest.approx(share)
        assert rows[name]["val_share"] == pytest.approx(share)
    assert rows["band"]["location_only"] is True
    assert rows["band"]["prior_iou"] == pytest.approx(100.0)
    assert rows["square"]["location_only"] is False
    assert rows["square"]["content_gain"] > 20
    assert rows["square"]["noise_iou"] < rows["square"]["real_iou"] - 20  # noise has no red square
    # The model's numbers are the run's own record; the prior's are `segaudit prior`'s.
    record = json.loads((base / "runs" / "bands" / "record.json").read_text())
    assert [rows[n]["real_iou"] for n in ("background", "band", "square")] == pytest.approx(record["metrics"]["iou"])
    prior = runner.invoke(app, ["prior", *common, "run_id=p"])
    assert prior.exit_code == 0, prior.output
    prior_iou = json.loads((base / "runs" / "p" / "record.json").read_text())["metrics"]["iou"]
    assert [rows[n]["prior_iou"] for n in ("background", "band", "square")] == pytest.approx(prior_iou)
    shown = runner.invoke(app, ["report", "classes", "bands", "--plots", str(tmp_path), *common])
    assert "location only" in shown.output and (tmp_path / "classes_bands.png").stat().st_size > 5000


def test_class_table_refuses_a_prior_run_and_an_unknown_id(band_run):
    common, _ = band_run
    for run_id, message in (("nope", "no run record"), ("../x", "run_id")):
        result = runner.invoke(app, ["report", "classes", run_id, *common])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output


# --------------------------------------------------------------------------- pair scoring
def _break_pairs(root: Path, share: float, seed: int = 1) -> tuple[dict[str, str], tuple[str, str]]:
    """Permute `share` of the training masks among their images (one cycle), and swap two
    other masks with each other. Returns {stem: stem of the image its mask came from} for
    the cycle, and the swapped pair."""
    masks = sorted((root / "masks" / "train").glob("*.png"))
    rng = np.random.default_rng(seed)
    picked = [masks[i] for i in rng.permutation(len(masks))[: int(share * len(masks)) + 2]]
    cycle, (a, b) = picked[:-2], picked[-2:]
    data = {p: p.read_bytes() for p in picked}
    origin = {}
    for target, source in zip(cycle, cycle[1:] + cycle[:1]):
        target.write_bytes(data[source])
        origin[target.stem] = source.stem
    a.write_bytes(data[b]), b.write_bytes(data[a])
    return origin, (a.stem, b.stem)


@pytest.fixture(scope="module")
def broken_diagnose(tmp_path_factory):
    """A diagnose over scenes with 30% of the training masks permuted and two swapped.

    Only the pair scoring trains for real (suspects.iters); the other steps take two
    steps each: what is tested here is the scoring and the verdict's use of it.
    """
    base = tmp_path_factory.mktemp("broken")
    root = write_synthetic(base / "data", SynthSpec(n_train=120, n_val=30, size=32, seed=5))
    origin, swapped = _break_pairs(root, 0.3)
    common = [
        "dataset=folder",
        f"dataset.root={root}",
        "dataset.cache_in_memory=true",
        "dataset.transform.crop=[32,32]",
        f"paths.runs={base / 'runs'}",
        f"paths.cache={base / 'cache'}",
        "train.progress=false",
        "train.batch_size=8",
        "model=unet",
    ]  # U-Net learns 32 px scenes fast
    result = runner.invoke(
        app,
        [
            "diagnose",
            *common,
            "train.iters=2",
            f"suspects.iters={SUSPECT_ITERS}",
            "diagnose.tier1=false",
            "--no-noise-train",
            "run_id=dz",
        ],
    )
    return common, base, origin, swapped, result


SUSPECT_ITERS = 150


def test_permuted_masks_are_found_with_precision_and_recall_over_0_9(broken_diagnose):
    common, base, origin, swapped, diagnosed = broken_diagnose
    result = runner.invoke(app, ["suspects", "--diagnose", "dz", "--format", "json", *common])
    assert result.exit_code == 1, result.output  # more than 10% of the training pairs flagged
    pairs = json.loads(result.stdout)
    assert {"stem", "split", "score", "flagged", "best_match"} <= set(pairs[0])
    assert len([p for p in pairs if p["split"] == "train"]) == 120
    assert len([p for p in pairs if p["split"] == "val"]) == 30
    broken = set(origin) | set(swapped)
    flagged = {p["stem"] for p in pairs if p["split"] == "train" and p["flagged"]}
    precision, recall = len(flagged & broken) / max(len(flagged), 1), len(flagged & broken) / len(broken)
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    clean = [p for p in pairs if p["split"] == "train" and p["stem"] not in broken]
    assert sum(p["flagged"] for p in clean) <= 0.02 * len(clean)
    assert sum(p["flagged"] for p in pairs if p["split"] == "val") <= 0.02 * 30  # val is clean
    # Where a permuted mask names an image, it is the one the mask was taken from.
    named = {p["stem"]: p["best_match"] for p in pairs if p["best_match"]}
    assert all(named[stem] == origin[stem] for stem in set(named) & set(origin))
    assert len(set(named) & set(origin)) >= 0.5 * len(origin)
    assert f"{len(flagged)} of 120 training pairs look misaligned" in result.stderr


def test_two_swapped_masks_name_each_other(broken_diagnose):
    common, _, _, (a, b), _ = broken_diagnose
    result = runner.invoke(app, ["suspects", "--diagnose", "dz", "--format", "json", *common])
    pairs = {p["stem"]: p for p in json.loads(result.stdout)}
    assert pairs[a]["flagged"] and pairs[b]["flagged"]
    assert (pairs[a]["best_match"], pairs[b]["best_match"]) == (b, a)


def test_diagnose_exits_1_naming_the_share_and_the_command(broken_diagnose):
    common, base, _, _, diagnosed = broken_diagnose
    assert diagnosed.exit_code == 1, diagnosed.output
    text = _flat(diagnosed.output)
    assert "training pairs look misaligned" in text and "more than 10%" in text
    assert "segaudit suspects --diagnose dz" in text
    record = json.loads((base / "runs" / "dz" / "record.json").read_text())
    assert record["verdict"] == PIPELINE_FAULT and record["evidence"]["suspect_share"] > 10
    assert record["steps"]["suspects"]


def test_suspects_table_export_and_grid(broken_diagnose, tmp_path):
    common, *_ = broken_diagnose
    result = runner.invoke(
        app,
        [
            "suspects",
            "--diagnose",
            "dz",
            "--top",
            "3",
            "--export",
            str(tmp_path / "pairs.csv"),
            "--plots",
            str(tmp_path),
            *common,
        ],
    )
    assert result.exit_code == 1
    text = _flat(result.output)
    assert "training pairs look misaligned" in text and "fits image" in text and "and " in text
    exported = pd.read_csv(tmp_path / "pairs.csv")
    assert len(exported) == 150 and exported.flagged.dtype == bool
    grid = next(tmp_path.glob("suspects_*.png"))
    with Image.open(grid) as im:
        assert im.width > 500 and im.height > 500
    for fmt in ("csv", "md"):
        shown = runner.invoke(app, ["suspects", "--diagnose", "dz", "--format", fmt, *common])
        assert "best_match" in shown.stdout


# --------------------------------------------------------------------------- backbone probe
def test_probe_records_a_probe_run_and_compares_with_a_random_encoder(tiny, runs_root):
    assert runner.invoke(app, ["train", *tiny, "run_id=m"]).exit_code == 0
    result = runner.invoke(app, ["probe", "m", *tiny, "backbone_probe.iters=3", "run_id=pr"])
    assert result.exit_code == 0, result.output
    assert "a random encoder, same architecture" in result.output
    record = json.loads((runs_root / "pr" / "record.json").read_text())
    block = record["probe"]
    assert record["phase"] == "probe" and record["metrics"]["miou"] == block["encoder_miou"]
    assert block["content_over_random"] == pytest.approx(block["encoder_miou"] - block["random_miou"])
    table = json.loads(runner.invoke(app, ["report", "--format", "json", *tiny]).stdout)
    assert {"train", "probe"} <= {row["phase"] for row in table}
    bad = runner.invoke(app, ["probe", "m", *tiny, "backbone_probe.features=middle"])
    assert bad.exit_code == 2 and "backbone_probe.features" in bad.output


def test_random_copy_redraws_every_weight_and_keeps_the_original():
    from segaudit.diagnostics.probe import find_encoder, random_copy
    from segaudit.models.build import build_model

    cfg = compose([])
    model = build_model(cfg.model, 8)
    encoder = find_encoder(model)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    fresh = random_copy(encoder, seed=0)
    conv = [k for k, v in before.items() if k.endswith("weight") and v.dim() == 4]
    assert all(not torch.equal(fresh.state_dict()[k], before[k]) for k in conv)
    assert all(torch.equal(encoder.state_dict()[k], before[k]) for k in before)
    with pytest.raises(Exception, match="no `encoder`"):
        find_encoder(torch.nn.Conv2d(3, 8, 1))


def test_class_table_of_an_audit_and_a_probe_of_an_smp_folder(tiny, runs_root, synth_root, tmp_path):
    import segmentation_models_pytorch as smp

    assert runner.invoke(app, ["train", *tiny, "run_id=m"]).exit_code == 0
    audited = runner.invoke(app, ["audit", "model", "m", *tiny, "run_id=a"])
    assert audited.exit_code == audit_exit(read(runs_root, "a")), audited.output
    rows = json.loads(runner.invoke(app, ["report", "classes", "a", "--format", "json", *tiny]).stdout)
    record = json.loads((runs_root / "a" / "record.json").read_text())
    assert [r["noise_iou"] for r in rows] == pytest.approx(record["audit"]["metrics"]["noise"]["iou"], nan_ok=True)
    folder = tmp_path / "unet-dir"
    smp.Unet("resnet18", encoder_weights=None, classes=8).save_pretrained(str(folder))
    result = runner.invoke(app, ["probe", str(folder), *tiny, "backbone_probe.iters=2", "run_id=pf"])
    assert result.exit_code == 0, result.output
    assert json.loads((runs_root / "pf" / "record.json").read_text())["probe"]["source"].endswith("unet-dir")
