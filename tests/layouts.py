"""Folder layouts of the official dataset presets (Cityscapes, BDD10K, Mapillary, IDD,
Outside15K) in miniature: band scenes of raw label ids, written where each preset looks."""

from __future__ import annotations

import json

import numpy as np
import yaml
from PIL import Image

SIZE = (32, 64)  # H, W: a driving-like 1:2 frame


def scene_of_bands(raw_ids: list[int], seed: int) -> np.ndarray:
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
            mask = scene_of_bands(raw_ids, seed=i + (100 if split == "val" else 0))
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
