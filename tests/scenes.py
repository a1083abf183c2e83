"""Procedural street scenes at any size and in any file layout, for tests at real sizes.

Scenes are rendered small by `segaudit.data.synthetic.render_scene` and resized with
PIL (bilinear images, nearest masks), so a 1024x2048 fixture costs a few PNG encodes.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from segaudit.data.synthetic import render_scene

# The synthetic classes (road, sidewalk, building, vegetation, sky, car, person, pole)
# as Cityscapes label ids; 255 (ego hood) becomes 0 "unlabeled".
CITYSCAPES_IDS = np.full(256, 0, np.uint8)
CITYSCAPES_IDS[:8] = [7, 8, 11, 21, 23, 26, 24, 17]
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 21: 8, 23: 10, 26: 13, 24: 11, 17: 5}


def scene(seed: int, height: int, width: int, base: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One (HxWx3 uint8 image, HxW uint8 class ids) scene at the given size."""
    image, mask = render_scene(np.random.default_rng(seed), base)
    image = np.array(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    mask = np.array(Image.fromarray(mask).resize((width, height), Image.NEAREST))
    return image, mask


def write_folder(root: Path, sizes: dict[str, list[tuple[int, int]]], num_classes: int = 8,
                 image_ext: str = ".png") -> Path:
    """A generic folder dataset: `sizes` maps a split to the (H, W) of each of its scenes."""
    for split, split_sizes in sizes.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i, (height, width) in enumerate(split_sizes):
            image, mask = scene(zlib.crc32(f"{split}/{i}".encode()), height, width)
            Image.fromarray(image).save(root / "images" / split / f"{i:04d}{image_ext}", quality=95)
            Image.fromarray(mask).save(root / "masks" / split / f"{i:04d}.png")
    (root / "dataset.yaml").write_text(f"num_classes: {num_classes}\n")
    return root


def write_cityscapes(root: Path, per_split: dict[str, int], height: int = 1024,
                     width: int = 2048) -> Path:
    """The official Cityscapes layout with `*_gtFine_labelIds.png` (34 raw ids)."""
    for split, count in per_split.items():
        for i in range(count):
            city = ["aachen", "bremen"][i % 2]
            stem = f"{city}_{i:06d}_000019"
            image, mask = scene(1000 * len(split) + i, height, width)
            (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
            (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                                        compress_level=1)
            Image.fromarray(CITYSCAPES_IDS[mask]).save(
                root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
    return root
