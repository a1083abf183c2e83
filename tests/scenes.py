"""Folder datasets of procedural scenes with a chosen size per image, for tests of
mixed sizes, sizes off the model's stride, and JPEG inputs."""

from __future__ import annotations

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
