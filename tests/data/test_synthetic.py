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


def test_texture_style_keeps_the_masks_and_gives_no_colour_cue(tmp_path):
    """The texture scenes have the colour scenes' masks (hence the same prior) and no class
    is brighter or more colourful than another on average: content is in the grain only."""
    colour = write_synthetic(tmp_path / "c", SynthSpec(n_train=40, n_val=1, size=64))
    texture = write_synthetic(tmp_path / "t", SynthSpec(n_train=40, n_val=1, size=64, style="texture", content=0.35))
    again = write_synthetic(tmp_path / "t2", SynthSpec(n_train=40, n_val=1, size=64, style="texture", content=0.35))
    assert _files(texture) == _files(again)  # same spec, same bytes
    means, spreads = {k: [] for k in range(len(CLASS_NAMES))}, []
    for path in sorted((texture / "masks" / "train").glob("*.png")):
        mask = np.array(Image.open(path))
        assert np.array_equal(mask, np.array(Image.open(colour / "masks" / "train" / path.name)))
        image = np.array(Image.open(texture / "images" / "train" / path.name)).astype(float)
        offsets = image - image.mean(2, keepdims=True)  # grey up to one tint per image and sensor noise
        spreads.append((offsets - offsets.mean((0, 1))).std())
        for k in means:
            if (mask == k).sum() > 20:
                means[k].append(image[mask == k].mean())
    assert max(spreads) < 5  # beyond the image's tint, channels differ by sensor noise (std 4) only
    overall = np.mean([m for v in means.values() for m in v])
    for k, values in means.items():
        if len(values) >= 10:  # classes seen often enough to average
            assert abs(np.mean(values) - overall) < 20, (CLASS_NAMES[k], np.mean(values), overall)


def test_distinct_classes_alone_stand_out(tmp_path):
    root = write_synthetic(
        tmp_path, SynthSpec(n_train=8, n_val=1, size=64, style="texture", content=1.0, distinct=("car", "person"))
    )
    for path in sorted((root / "masks" / "train").glob("*.png")):
        mask = np.array(Image.open(path))
        grey = np.array(Image.open(root / "images" / "train" / path.name)).astype(float).mean(2)
        rows = [grey[y][(mask[y] != 255) & ~np.isin(mask[y], [5, 6])] for y in range(64)]
        # without the lighting gradient and sensor noise, every other class is one flat grey
        assert max(np.std(r) for r in rows if r.size > 8) < 8
