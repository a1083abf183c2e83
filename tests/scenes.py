"""Folder datasets of procedural scenes with a chosen size per image, for tests of
mixed sizes, sizes off the model's stride, and JPEG inputs."""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from segaudit.data.synthetic import render_scene_at


def write_folder(
    root: Path, sizes: dict[str, list[tuple[int, int]]], num_classes: int = 8, image_ext: str = ".png"
) -> Path:
    """A generic folder dataset: `sizes` maps a split to the (H, W) of each of its scenes."""
    for split, split_sizes in sizes.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i, (height, width) in enumerate(split_sizes):
            image, mask = render_scene_at(zlib.crc32(f"{split}/{i}".encode()), height, width)
            Image.fromarray(image).save(root / "images" / split / f"{i:04d}{image_ext}", quality=95)
            Image.fromarray(mask).save(root / "masks" / split / f"{i:04d}.png")
    (root / "dataset.yaml").write_text(f"num_classes: {num_classes}\n")
    return root


def write_band_and_square(root: Path, n_train: int, n_val: int, size: int = 32, seed: int = 0) -> Path:
    """Three classes with known sources of evidence, over noise images:
    `band` always fills the top quarter and its pixels are noise like everywhere else
    (only its place gives it away); `square` is a red square at a random place (only
    its colour gives it away); `background` is the rest."""
    rng = np.random.default_rng(seed)
    side = size // 4
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            mask = np.zeros((size, size), np.uint8)
            mask[:side] = 1
            y, x = rng.integers(side, size - side + 1), rng.integers(0, size - side + 1)
            image[y : y + side, x : x + side] = (220, 30, 30)
            mask[y : y + side, x : x + side] = 2
            Image.fromarray(image).save(root / "images" / split / f"{i:04d}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{i:04d}.png")
    (root / "dataset.yaml").write_text("num_classes: 3\nclass_names: [background, band, square]\n")
    return root


def with_dataset_yaml(data: Path, root: Path, content: bytes) -> Path:
    """`root`: the folder dataset at `data` (its images and masks linked) with another
    `dataset.yaml` beside them."""
    root.mkdir(parents=True)
    for name in ("images", "masks"):
        (root / name).symlink_to(data / name)
    (root / "dataset.yaml").write_bytes(content)
    return root


def permute_masks(root: Path, out: Path, share: float, seed: int = 0) -> Path:
    """A copy of `root` with `share` of its training masks moved one along a cycle among
    their images (share 1: every pair broken), on disk, as a renaming bug would."""
    shutil.copytree(root, out)
    masks = sorted((out / "masks" / "train").glob("*.png"))
    picked = [masks[i] for i in np.random.default_rng(seed).permutation(len(masks))[: round(share * len(masks))]]
    data = [p.read_bytes() for p in picked]
    for path, content in zip(picked, data[1:] + data[:1]):
        path.write_bytes(content)
    return out


def copy_with_train_images(root: Path, out: Path, make) -> Path:
    """A copy of `root` whose training images are replaced by `make(index, shape)`."""
    shutil.copytree(root, out)
    for index, path in enumerate(sorted((out / "images" / "train").glob("*.png"))):
        shape = np.array(Image.open(path)).shape
        Image.fromarray(make(index, shape)).save(path)
    return out


def data_overrides(tiny: list[str]) -> list[str]:
    """The dataset and batch overrides of the `tiny` fixture (what a sweep passes on to each run)."""
    return [o for o in tiny if o.startswith(("dataset.", "train.batch", "train.eval_batch"))]
