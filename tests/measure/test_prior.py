"""The analytic prior on hand-made label maps, and its run record."""

import json
import math

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

from segaudit.core.config import compose
from segaudit.core.errors import DataError
from segaudit.measure.prior import (
    PSEUDO_COUNTS,
    analytic_prior,
    choose_pseudo_count,
    global_frequencies,
    leave_one_out_log_likelihood,
    leave_one_out_scores,
)
from segaudit.report.pictures import prior_pictures
from segaudit.runs.records import load_table
from segaudit.workflows.prior import run_prior


def _folder(root, train_masks, val_masks, num_classes=3):
    for split, masks in (("train", train_masks), ("val", val_masks)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i, mask in enumerate(masks):
            mask = np.asarray(mask, np.uint8)
            Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(root / "images" / split / f"{i}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    (root / "dataset.yaml").write_text(yaml.safe_dump({"num_classes": num_classes}))
    return root


def _dcfg(root, num_classes=3):
    return OmegaConf.create(
        {
            "name": "folder",
            "root": str(root),
            "num_classes": num_classes,
            "ignore_index": 255,
            "layout": {
                "train": {"images": "images/train", "masks": "masks/train"},
                "val": {"images": "images/val", "masks": "masks/val"},
                "image_suffix": ".png",
                "mask_suffix": ".png",
            },
            "transform": {"resize": None},
        }
    )


def test_hand_computed_prior(tmp_path):
    # Three 2x2 training maps. Per pixel (row-major) the class counts are
    #   p0: 0,0,0 -> 0      p1: 1,1,255 -> 1 (ignore excluded)
    #   p2: 2,0,2 -> 2      p3: 1,255,255 -> 1
    train = [[[0, 1], [2, 1]], [[0, 1], [0, 255]], [[0, 255], [2, 255]]]
    val = [[[0, 1], [2, 2]]]  # prior predicts [[0,1],[2,1]]: one error (p3: gt 2, pred 1)
    result = analytic_prior(_dcfg(_folder(tmp_path, train, val)), workers=2)
    assert result.counts[:, 0, 0].tolist() == [3, 0, 0]
    assert result.counts[:, 0, 1].tolist() == [0, 2, 0]
    assert result.counts[:, 1, 0].tolist() == [1, 0, 2]
    assert result.counts[:, 1, 1].tolist() == [0, 1, 0]
    torch.testing.assert_close(result.frequencies[:, 1, 0], torch.tensor([1 / 3, 0, 2 / 3]))
    # Class IoU: 0 -> 1/1, 1 -> tp1 / (gt1 + pred2 - tp1) = 1/2, 2 -> 1/2.
    assert result.per_pixel["iou"] == pytest.approx([100.0, 50.0, 50.0])
    assert result.per_pixel["miou"] == pytest.approx(200 / 3)
    # Global counts: class 0 has 4 pixels, 1 has 3, 2 has 2 -> majority 0 everywhere.
    assert result.majority_class == 0
    assert result.majority["iou"][0] == pytest.approx(25.0)
    assert result.majority["iou"][1:] == [0.0, 0.0]
    assert result.n_train == 3 and result.size == (2, 2)


def test_prior_log_likelihood_of_val_labels_by_hand(tmp_path):
    """The reference of the information evidence: the val labels' log2-likelihood under
    the smoothed per-pixel frequencies (c + a g) / (n + a) and under g alone."""
    train = [[[0, 1], [2, 1]], [[0, 1], [0, 255]], [[0, 255], [2, 255]]]
    val = [[[0, 1], [2, 2]], [[1, 255], [0, 0]]]
    result = analytic_prior(_dcfg(_folder(tmp_path, train, val)), workers=2)
    a = result.pseudo_count
    g = np.array([4 + 1, 3 + 1, 2 + 1]) / (9 + 3)  # global counts, add-one smoothed
    counts = result.counts.numpy().astype(float)
    probs = (counts + a * g[:, None, None]) / (counts.sum(0) + a)
    for image, labels in enumerate(val):
        labels = np.array(labels)
        cells = [(y, x) for y in range(2) for x in range(2) if labels[y, x] != 255]
        location = -sum(np.log2(probs[labels[y, x], y, x]) for y, x in cells)
        glob = -sum(np.log2(g[labels[y, x]]) for y, x in cells)
        assert result.reference["location"].nll[image] == pytest.approx(location)
        assert result.reference["global"].nll[image] == pytest.approx(glob)
        assert result.reference["location"].pixels[image] == len(cells)
    assert result.val_stems == ["0", "1"]
    # the prior map's per-image counts give back its dataset-level mIoU
    assert result.reference["location"].miou() == pytest.approx(result.per_pixel["miou"])
    # Training labels, each scored by the prior of the other training labels (in the order given).
    masks = [tmp_path / "masks" / "train" / f"{i}.png" for i in (2, 0)]
    on_train = leave_one_out_scores(_dcfg(tmp_path), result.counts, a, masks)
    for row, index in enumerate((2, 0)):
        labels = np.array(train[index])
        others = counts - np.stack([(labels == k) for k in range(3)]).astype(float)
        loo = (others + a * g[:, None, None]) / (others.sum(0) + a)
        cells = [(y, x) for y in range(2) for x in range(2) if labels[y, x] != 255]
        assert on_train.nll[row] == pytest.approx(-sum(np.log2(loo[labels[y, x], y, x]) for y, x in cells))
        assert on_train.pixels[row] == len(cells)


def test_pseudo_count_maximises_the_leave_one_out_likelihood():
    """The closed form equals leaving each training map out in turn, by brute force."""
    rng = np.random.default_rng(0)
    maps = rng.choice([0, 0, 0, 1, 2], size=(6, 2, 3))
    counts = torch.from_numpy(np.stack([(maps == k).sum(0) for k in range(3)]))
    g = global_frequencies(counts)
    for a in (0.5, 4.0):
        brute = 0.0
        for held in maps:
            rest = counts.numpy() - np.stack([(held == k) for k in range(3)])
            probs = (rest + a * g[:, None, None]) / (rest.sum(0) + a)
            brute += sum(np.log(probs[held[y, x], y, x]) for y in range(2) for x in range(3))
        assert leave_one_out_log_likelihood(counts, g, a) == pytest.approx(brute)
    best = choose_pseudo_count(counts, g)
    assert all(
        leave_one_out_log_likelihood(counts, g, best) >= leave_one_out_log_likelihood(counts, g, a)
        for a in PSEUDO_COUNTS
    )


def test_streaming_matches_one_shot_numpy(synth_root):
    dcfg = _dcfg(synth_root, num_classes=8)
    result = analytic_prior(dcfg, workers=3)
    masks = np.stack([np.array(Image.open(p)) for p in sorted((synth_root / "masks/train").glob("*.png"))])
    expected = np.stack([(masks == c).sum(0) for c in range(8)])
    np.testing.assert_array_equal(result.counts.numpy(), expected)


def test_label_outside_classes_names_the_file(tmp_path):
    root = _folder(tmp_path, [[[0, 7]]], [[[0, 1]]])
    with pytest.raises(DataError, match=r"masks/train/0.png: label value\(s\) \[7\] outside \[0, 3\)"):
        analytic_prior(_dcfg(root))


def test_prior_run_lands_in_the_table_with_plots(synth_root, runs_root, tmp_path):
    cfg = compose(["dataset=folder", f"dataset.root={synth_root}", f"paths.runs={runs_root}"])
    record = run_prior(cfg)
    drawn = prior_pictures(cfg, record, tmp_path / "plots")
    assert json.loads((runs_root / record["run_id"] / "record.json").read_text())["plots"] == drawn
    row = load_table(runs_root).iloc[0]
    assert row.phase == "prior" and row.miou == pytest.approx(record["prior"]["per_pixel"]["miou"])
    assert not math.isnan(row.miou) and record["prior"]["majority"]["miou"] < row.miou
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert len(pngs) == 9 and pngs[0].name == "prior_00_road.png" and pngs[-1].name == "prior_all.png"
    picture = np.array(Image.open(pngs[4]).convert("L"))  # sky: bright at the top
    assert picture.std() > 10  # not blank
