"""Dataset presets on tiny fixtures in each official folder layout: mapping, one step, prior."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from segaudit.core.config import compose
from segaudit.data import build_dataset, prepare_dataset
from segaudit.measure.prior import analytic_prior
from segaudit.train.engine import train

SIZE = (32, 64)  # H, W: a driving-like 1:2 frame


def _scene(raw_ids: list[int], seed: int) -> np.ndarray:
    """A label map of horizontal bands of the given raw ids (top to bottom)."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(4, SIZE[0] - 4), len(raw_ids) - 1, replace=False))
    mask = np.zeros(SIZE, np.uint8)
    for band, (lo, hi) in enumerate(zip([0, *cuts], [*cuts, SIZE[0]])):
        mask[lo:hi] = raw_ids[band]
    return mask


def _write(root, image_rel, mask_rel, raw_ids, n=4, palette=False, ext=".png"):
    for split, count in (("train", n), ("val", 2)):
        for i in range(count):
            image_path = root / image_rel(split, i)
            mask_path = root / mask_rel(split, i)
            image_path.parent.mkdir(parents=True, exist_ok=True)
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            mask = _scene(raw_ids, seed=i + (100 if split == "val" else 0))
            Image.fromarray(np.repeat(mask[..., None] * 3, 3, axis=2)).save(image_path)
            label = Image.fromarray(mask)
            if palette:
                label = label.convert("P")
                label.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
            label.save(mask_path)


def cityscapes(root):
    # Raw ids: 23 sky, 7 road, 26 car, 0 unlabeled.
    _write(
        root,
        lambda s, i: f"leftImg8bit/{s}/aachen/aachen_{i:06d}_000019_leftImg8bit.png",
        lambda s, i: f"gtFine/{s}/aachen/aachen_{i:06d}_000019_gtFine_labelIds.png",
        [23, 26, 7, 0],
    )
    # Distractors in the same folders must be ignored.
    Image.fromarray(np.zeros(SIZE, np.uint8)).save(
        root / "gtFine/train/aachen/aachen_000000_000019_gtFine_instanceIds.png"
    )


def bdd10k(root):
    _write(
        root,
        lambda s, i: f"images/10k/{s}/{i:08x}-frame.jpg",
        lambda s, i: f"labels/sem_seg/masks/{s}/{i:08x}-frame.png",
        [10, 13, 0, 255],
    )


def mapillary(root, version="v1.2"):
    _write(
        root,
        lambda s, i: f"{'training' if s == 'train' else 'validation'}/images/key{i}.jpg",
        lambda s, i: f"{'training' if s == 'train' else 'validation'}/{version}/labels/key{i}.png",
        [27, 55, 13, 65],
        palette=True,
    )
    count = 65 if version == "v1.2" else 124
    labels = [{"name": f"n{i}", "readable": f"Class {i}"} for i in range(count + 1)]
    (root / f"config_{version}.json").write_text(json.dumps({"labels": labels}))


def idd(root):
    _write(
        root,
        lambda s, i: f"leftImg8bit/{s}/{i:03d}/{i:06d}_leftImg8bit.png",
        lambda s, i: f"gtFine/{s}/{i:03d}/{i:06d}_gtFine_labellevel3Ids.png",
        [25, 9, 0, 255],
    )


def outside15k(root):
    _write(root, lambda s, i: f"images/{s}/img{i}.png", lambda s, i: f"masks/{s}/img{i}.png", [2, 1, 0])
    (root / "dataset.yaml").write_text(yaml.safe_dump({"class_names": ["ground", "thing", "sky"]}))


PRESETS = {
    "cityscapes": (cityscapes, 19, {23: 10, 26: 13, 7: 0, 0: 255}),
    "bdd10k": (bdd10k, 19, {10: 10, 13: 13, 0: 0, 255: 255}),
    "mapillary": (mapillary, 65, {27: 27, 55: 55, 13: 13, 65: 255}),
    "mapillary_v2": (lambda r: mapillary(r, "v2.0"), 124, {27: 27, 55: 55, 13: 13, 65: 65}),
    "idd": (idd, 26, {25: 25, 9: 9, 0: 0, 255: 255}),
    "idd_aw": (idd, 26, {25: 25, 9: 9, 0: 0, 255: 255}),
    "outside15k": (outside15k, 3, {2: 2, 1: 1, 0: 0}),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_layout_mapping_step_and_prior(preset, tmp_path):
    writer, num_classes, mapping = PRESETS[preset]
    root = tmp_path / "data"
    writer(root)
    overrides = [
        f"dataset={preset}",
        f"dataset.root={root}",
        "train.iters=1",
        "train.batch_size=2",
        "train.progress=false",
        f"paths.runs={tmp_path / 'runs'}",
        "model=unet",
        "model.encoder=resnet18",
    ]
    cfg = compose(overrides)
    dcfg = prepare_dataset(cfg.dataset, tmp_path / "cache")
    assert dcfg.num_classes == num_classes and len(dcfg.class_names) == num_classes
    # Labels are mapped on read: compare with the raw ids written to disk.
    dataset = build_dataset(dcfg, "val", train=False)
    raw = _scene(list(mapping), seed=100)
    _, mask = dataset[0]
    expected = np.vectorize(mapping.get)(raw)
    np.testing.assert_array_equal(mask.numpy(), expected)
    # One training step and the analytic prior on the mapped labels.
    assert train(cfg)["status"] == "completed"
    prior = analytic_prior(dcfg)
    assert prior.counts.shape == (num_classes, *SIZE)
    present = sorted({v for v in mapping.values() if v != 255})
    assert sorted(np.flatnonzero(prior.counts.sum((1, 2)).numpy()).tolist()) == present


def test_cityscapes_train_ids_and_names(tmp_path):
    cityscapes(tmp_path)
    dcfg = prepare_dataset(compose(["dataset=cityscapes", f"dataset.root={tmp_path}"]).dataset, "/")
    assert dcfg.class_names[0] == "road" and dcfg.class_names[13] == "car"
    # The examples: label id 7 -> road (0), 26 -> car (13), 0 -> ignore.
    from segaudit.data.labels import label_lut

    lut = label_lut(dcfg)
    assert (lut[7], lut[26], lut[0], lut[33]) == (0, 13, 255, 18)


def test_cityscapes_prefers_label_train_ids_when_present(tmp_path):
    cityscapes(tmp_path)
    for path in (tmp_path / "gtFine").rglob("*_gtFine_labelIds.png"):
        train_ids = np.array(Image.open(path))
        train_ids = np.where(train_ids == 7, 0, 255).astype(np.uint8)
        Image.fromarray(train_ids).save(str(path).replace("_labelIds", "_labelTrainIds"))
    dcfg = prepare_dataset(compose(["dataset=cityscapes", f"dataset.root={tmp_path}"]).dataset, "/")
    assert dcfg.layout.mask_suffix == "_gtFine_labelTrainIds.png" and dcfg.label_map is None


def test_mapillary_names_come_from_its_config_json(tmp_path):
    mapillary(tmp_path)
    dcfg = prepare_dataset(compose(["dataset=mapillary", f"dataset.root={tmp_path}"]).dataset, "/")
    assert dcfg.class_names[:2] == ["Class 0", "Class 1"] and len(dcfg.class_names) == 65
