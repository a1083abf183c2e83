"""The embedded synthetic dataset: deterministic, and informative in both location and content."""

import numpy as np
import yaml
from PIL import Image

from segaudit.data.synthetic import CLASS_NAMES, SynthSpec, ensure_synthetic, write_synthetic


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    spec = SynthSpec(n_train=6, n_val=3, size=32, seed=5)
    a = _files(write_synthetic(tmp_path / "a", spec))
    b = _files(write_synthetic(tmp_path / "b", spec))
    assert a == b
    assert len(a) == 2 * (6 + 3) + 1
    other = _files(write_synthetic(tmp_path / "c", SynthSpec(n_train=6, n_val=3, size=32, seed=6)))
    assert other.keys() == a.keys() and other != a


def test_layout_and_labels(synth_root):
    meta = yaml.safe_load((synth_root / "dataset.yaml").read_text())
    assert meta["class_names"] == CLASS_NAMES and meta["ignore_index"] == 255
    masks = [np.array(Image.open(p)) for p in sorted((synth_root / "masks" / "train").glob("*.png"))]
    images = [np.array(Image.open(p)) for p in sorted((synth_root / "images" / "train").glob("*.png"))]
    assert len(masks) == 16 and images[0].shape == (32, 32, 3) and masks[0].dtype == np.uint8
    values = set(np.unique(np.stack(masks)).tolist())
    assert values <= set(range(len(CLASS_NAMES))) | {255}
    assert {0, 1, 2, 3, 4} <= values  # road, sidewalk, building, vegetation, sky everywhere


def test_location_prior_and_content_both_carry_information(tmp_path):
    root = write_synthetic(tmp_path, SynthSpec(n_train=60, n_val=1, size=48, seed=0))
    masks = np.stack([np.array(Image.open(p)) for p in sorted((root / "masks/train").glob("*.png"))])
    images = np.stack([np.array(Image.open(p)) for p in sorted((root / "images/train").glob("*.png"))])
    # Location: sky dominates the top row, road the bottom centre ...
    assert (masks[:, 0] == 4).mean() > 0.5
    assert (masks[:, -8, 20:28] == 0).mean() > 0.5
    # ... but the horizon moves, so location alone is not enough.
    sky_rows = (masks == 4).mean(axis=(1, 2))
    assert sky_rows.std() > 0.04
    # Content: classes have distinct typical colours (sky bluer than vegetation).
    sky, veg = images[masks == 4], images[masks == 3]
    assert sky[:, 2].mean() - sky[:, 1].mean() > 20 > veg[:, 2].mean() - veg[:, 1].mean()


def test_cache_is_generated_once(tmp_path):
    spec = SynthSpec(n_train=2, n_val=1, size=16)
    first = ensure_synthetic(tmp_path, spec)
    stamp = (first / "dataset.yaml").stat().st_mtime_ns
    assert ensure_synthetic(tmp_path, spec) == first
    assert (first / "dataset.yaml").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp folders left


def test_a_test_split_leaves_train_and_val_unchanged(tmp_path):
    plain = write_synthetic(tmp_path / "plain", SynthSpec(n_train=3, n_val=2, size=32))
    with_test = write_synthetic(tmp_path / "test", SynthSpec(n_train=3, n_val=2, size=32, n_test=2))
    for sub in ("images/train", "images/val", "masks/train", "masks/val"):
        for path in (plain / sub).iterdir():
            assert path.read_bytes() == (with_test / sub / path.name).read_bytes()
    assert not (plain / "images" / "test").exists()
    tests = sorted(p.name for p in (with_test / "masks" / "test").iterdir())
    assert tests == ["test_00000.png", "test_00001.png"]
    val = (with_test / "masks" / "val" / "val_00000.png").read_bytes()
    assert (with_test / "masks" / "test" / "test_00000.png").read_bytes() != val  # new scenes
    assert SynthSpec(n_test=2).folder_name() != SynthSpec().folder_name()
