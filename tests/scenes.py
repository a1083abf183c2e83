"""Folder datasets of procedural scenes with a chosen size per image, for tests of
mixed sizes, sizes off the model's stride, and JPEG inputs."""

from __future__ import annotations

import zlib
from pathlib import Path

from PIL import Image

from segaudit.data.synthetic import render_scene_at


def write_folder(root: Path, sizes: dict[str, list[tuple[int, int]]], num_classes: int = 8,
                 image_ext: str = ".png") -> Path:
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
