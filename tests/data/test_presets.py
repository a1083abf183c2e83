"""Dataset presets on tiny fixtures in each official folder layout: mapping, one step, prior."""

import numpy as np
import pytest
from layouts import PRESETS, SIZE, cityscapes, mapillary, scene_of_bands
from PIL import Image

from segaudit.core.config import compose
from segaudit.data import build_dataset, prepare_dataset
from segaudit.measure.prior import analytic_prior
from segaudit.train.engine import train


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
    raw = scene_of_bands(list(mapping), seed=100)
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
