"""The data check: find what is wrong with a dataset before any model sees it.

Every image and mask is read once, in parallel threads. Problems are one line each,
naming the file and what is wrong; a per-split summary follows. The alignment probe
pushes images that encode their own mask through the configured train-time transforms:
an augmentation that moves one and not the other is exactly the bug class that makes
every model land on the location prior.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, open_dict
from PIL import Image
from torchvision import tv_tensors

from segaudit.core.errors import DataError, first_line
from segaudit.data.folder import Sample, list_by_stem, pairing_hint, short_list
from segaudit.data.labels import label_lut
from segaudit.data.transforms import build_transform

ALIGNMENT_MIN = 99.9  # percent of probe pixels whose image still encodes their label


@dataclass
class Problem:
    """One thing wrong with one file (or split)."""

    split: str
    path: str
    message: str
    error: bool = True
    level: str = ""  # "info" for facts worth knowing that are not problems

    def line(self) -> str:
        level = self.level or ("error" if self.error else "warning")
        return f"{level}: {self.path}: {self.message}"


@dataclass
class SplitSummary:
    split: str
    pairs: int = 0
    orphans: int = 0
    bad_files: int = 0
    labelled_pixels: int = 0
    ignore_pixels: int = 0
    class_pixels: list[int] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)  # (W, H) of the images -> count

    @property
    def sizes_text(self) -> str:
        """`2048x1024` for one size, `3 sizes (64x64 x4, 70x50 x2, ...)` for several."""
        if not self.sizes:
            return "-"
        shown = [f"{w}x{h}" + (f" x{n}" if len(self.sizes) > 1 else "") for (w, h), n in self.sizes.most_common(3)]
        more = ", ..." if len(self.sizes) > 3 else ""
        return shown[0] if len(shown) == 1 else f"{len(self.sizes)} sizes ({', '.join(shown)}{more})"

    @property
    def ignore_share(self) -> float:
        total = self.labelled_pixels + self.ignore_pixels
        return 100.0 * self.ignore_pixels / total if total else float("nan")


@dataclass
class CheckReport:
    problems: list[Problem]
    summaries: list[SplitSummary]
    alignment: float | None
    bad_stems: dict[str, list[str]]  # split -> stems of pairs with an error
    consistency: dict | None = None  # `segaudit.measure.consistency.split_consistency` (train vs val labels)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.error]


EXIF_ORIENTATION = 0x0112
ORIENTATIONS = {
    2: "mirrored",
    3: "rotated 180°",
    4: "flipped upside down",
    5: "transposed",
    6: "rotated 90° clockwise",
    7: "transversed",
    8: "rotated 90° counter-clockwise",
}


def orientation_note(im: Image.Image) -> str | None:
    """What an image's EXIF orientation tag does in other tools, or None without one.

    Viewers and PIL's `ImageOps.exif_transpose` turn such an image before showing it, so
    a mask drawn in one of them fits the turned picture, not the stored pixels segaudit
    reads (labelme #1529)."""
    value = im.getexif().get(EXIF_ORIENTATION)
    if value not in ORIENTATIONS:
        return None
    return (
        f"EXIF orientation {value}: viewers and exif_transpose show it {ORIENTATIONS[value]}; segaudit "
        f"reads the pixels as stored (check its mask was drawn on those, not on the turned view)"
    )


def _read_pair(
    sample: Sample, num_classes: int, ignore_index: int, lut
) -> tuple[list[tuple[str, str]], np.ndarray | None, tuple[int, int] | None, str | None]:
    """Decode one pair fully; return (problems, 256-bin histogram of mapped label values,
    the image's (W, H) or None when it does not decode, its EXIF orientation note)."""
    problems, image_size, turned = [], None, None
    try:
        with Image.open(sample.image) as im:
            im.load()  # a truncated file fails here, not at open
            image_size = im.size
            turned = orientation_note(im)
    except Exception as err:  # PIL raises many types for broken files
        problems.append((str(sample.image), f"unreadable image ({first_line(err)})"))
    try:
        with Image.open(sample.mask) as im:
            im.load()
            mode, palette = im.mode, im.palette
            mask = np.array(im)
    except Exception as err:
        problems.append((str(sample.mask), f"unreadable mask ({first_line(err)})"))
        return problems, None, image_size, turned
    if mask.ndim != 2:
        hint = "" if palette is None else " (palette present but image is not mode P)"
        problems.append(
            (str(sample.mask), f"mask has {mask.shape[-1]} channels ({mode}); expected one channel of class ids{hint}")
        )
        return problems, None, image_size, turned
    if mask.dtype != np.uint8:
        if mask.max(initial=0) > 255:
            problems.append((str(sample.mask), f"mask values up to {mask.max()} do not fit uint8 ids"))
            return problems, None, image_size, turned
        mask = mask.astype(np.uint8)
    if image_size is not None and image_size != (mask.shape[1], mask.shape[0]):
        problems.append(
            (
                str(sample.mask),
                f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {image_size[0]}x{image_size[1]}",
            )
        )
    mapped = mask if lut is None else lut[mask]
    histogram = np.bincount(mapped.ravel(), minlength=256)
    bad = [int(v) for v in np.flatnonzero(histogram) if v >= num_classes and v != ignore_index]
    if bad:
        problems.append(
            (str(sample.mask), f"label values {bad[:8]} outside [0, {num_classes}) and not ignore ({ignore_index})")
        )
    return problems, histogram, image_size, turned


def _examples(stems: dict, suffix: str, kind: str) -> str:
    """`3 *.png masks (a_mask.png, b_mask.png, c_mask.png, ...)`: what a split holds."""
    shown = [stem + suffix for stem in sorted(stems)[:3]]
    return f"{len(stems)} *{suffix} {kind}" + (f" ({short_list(shown)}, ...)" if shown else "")


def _scan_split(dcfg: DictConfig, split: str) -> tuple[list[Sample], list[Problem], list[str]]:
    root, layout = Path(dcfg.root), dcfg.layout[split]
    image_dir, mask_dir = root / layout.images, root / layout.masks
    problems = [
        Problem(split, str(folder), "folder not found") for folder in (image_dir, mask_dir) if not folder.is_dir()
    ]
    if problems:
        return [], problems, []
    images = list_by_stem(image_dir, dcfg.layout.image_suffix)
    masks = list_by_stem(mask_dir, dcfg.layout.mask_suffix)
    problems += [
        Problem(split, str(images[s]), f"image without mask (expected {mask_dir / s}{dcfg.layout.mask_suffix})")
        for s in sorted(set(images) - set(masks))
    ]
    problems += [Problem(split, str(masks[s]), "mask without image") for s in sorted(set(masks) - set(images))]
    basenames = Counter(Path(s).name for s in images)
    problems += [
        Problem(split, str(image_dir), f"stem '{name}' appears {count} times in sub-folders", error=False)
        for name, count in sorted(basenames.items())
        if count > 1
    ]
    samples = [Sample(s, images[s], masks[s]) for s in sorted(set(images) & set(masks))]
    if not samples:
        hint = pairing_hint(set(images), set(masks), dcfg.layout.mask_suffix)
        found = (
            _examples(images, dcfg.layout.image_suffix, "images"),
            _examples(masks, dcfg.layout.mask_suffix, "masks"),
        )
        problems.append(
            Problem(split, str(image_dir), f"empty split: no image/mask pairs among {' and '.join(found)}{hint}")
        )
    return samples, problems, sorted(set(images) ^ set(masks))


def _split_facts(summary: SplitSummary, dcfg: DictConfig, ignore_index: int) -> list[Problem]:
    """Split-level findings: a split with nothing labelled, and mixed image sizes."""
    found = []
    where = str(Path(dcfg.root) / dcfg.layout[summary.split].masks)
    if summary.pairs and summary.ignore_pixels and not summary.labelled_pixels:
        # Train and val are what every run learns from and is scored on: an error there.
        # Other splits (test) are only skipped by the gates that use them.
        needed = summary.split in ("train", "val")
        purpose = {"train": "nothing to learn from", "val": "nothing to score"}.get(summary.split, "")
        found.append(
            Problem(
                summary.split,
                where,
                f"every pixel is ignore ({ignore_index})"
                + (f": {purpose}" if purpose else "")
                + " (check dataset.ignore_index "
                "and dataset.label_map)",
                error=needed,
            )
        )
    if (
        len(summary.sizes) > 1
        and summary.split == "train"
        and dcfg.transform.get("crop") is None
        and dcfg.transform.get("resize") is None
    ):
        found.append(
            Problem(
                summary.split,
                "dataset.transform.crop",
                f"null, but the training images come in {summary.sizes_text}: a batch needs one size (crop: auto)",
            )
        )
    if len(summary.sizes) > 1:
        found.append(
            Problem(
                summary.split,
                where,
                f"images of {summary.sizes_text}: evaluation "
                "batches same-sized images together and scores each at its own size",
                error=False,
                level="info",
            )
        )
    return found


def check_dataset(
    dcfg: DictConfig, splits=("train", "val"), workers: int | None = None, probe: bool = True
) -> CheckReport:
    """Check a prepared dataset config. Never raises for bad files: it reports them."""
    workers = workers or min(8, os.cpu_count() or 1)
    num_classes, ignore_index = int(dcfg.num_classes), int(dcfg.ignore_index)
    lut = label_lut(dcfg)
    problems, summaries, bad_stems = [], [], {}
    for split in splits:
        if split not in dcfg.layout:
            continue
        samples, split_problems, orphans = _scan_split(dcfg, split)
        problems += split_problems
        if orphans:
            bad_stems.setdefault(split, []).extend(orphans)
        summary = SplitSummary(split, pairs=len(samples), orphans=len(orphans))
        histogram = np.zeros(256, dtype=np.int64)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = pool.map(lambda s: _read_pair(s, num_classes, ignore_index, lut), samples)
            for sample, (found, hist, size, turned) in zip(samples, results):
                if turned:
                    problems.append(Problem(split, str(sample.image), turned, error=False))
                if found:
                    summary.bad_files += 1
                    bad_stems.setdefault(split, []).append(sample.stem)
                    problems += [Problem(split, path, message) for path, message in found]
                if hist is not None:
                    histogram += hist
                if size is not None:
                    summary.sizes[size] += 1
        summary.class_pixels = histogram[:num_classes].tolist()
        summary.labelled_pixels = int(histogram[:num_classes].sum())
        summary.ignore_pixels = int(histogram[ignore_index])
        summaries.append(summary)
        problems += _split_facts(summary, dcfg, ignore_index)
    alignment = alignment_probe(dcfg) if probe else None
    if alignment is not None and alignment < ALIGNMENT_MIN:
        problems.append(
            Problem(
                "train",
                "dataset.transform",
                f"train-time transforms keep only {alignment:.2f}% of image/mask "
                f"pixels aligned (need >= {ALIGNMENT_MIN}%)",
            )
        )
    return CheckReport(problems, summaries, alignment, bad_stems)


def alignment_probe(dcfg: DictConfig, samples: int = 8, seed: int = 0) -> float:
    """Percent of probe pixels whose image and mask still come from the same place after
    the configured train-time transforms.

    The probe image holds each pixel's own source coordinates as float values (channel
    0: x, channel 1: y) and the probe mask the same coordinate modulo 250, once for x and
    once for y. Bilinear image resampling reproduces a linear coordinate exactly, and a
    nearest-neighbour mask picks the source pixel under each output pixel's centre, so
    aligned pairs differ by at most half a source pixel at any scale. A flip, a one-pixel
    shift or a transpose of one and not the other shows up as a larger difference.
    Pixels within the resampling kernel's reach of the source frame's edge are left out
    (the kernel is cut short there), and so is the ignore padding of crops.
    """
    height, width = _probe_size(dcfg)
    tcfg = dcfg.transform.copy()
    tcfg.mean, tcfg.std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]  # read the coordinates back as they are
    if tcfg.get("crop") == "auto":  # unresolved (no training pair): probe at the probe's size
        tcfg.crop = [height, width]
    transform = build_transform(tcfg, train=True, ignore_index=255)
    lowest_scale = min(1.0, float(min(tcfg.scale)))
    margin = math.ceil(1.0 / lowest_scale) + 1  # antialias reach, in source pixels
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    image = tv_tensors.Image(torch.stack([xs, ys, torch.zeros_like(xs)]))
    torch_state = torch.get_rng_state()
    torch.manual_seed(seed)
    agree = total = 0
    try:
        for axis, coordinate in ((0, xs), (1, ys)):
            mask = tv_tensors.Mask((coordinate % PROBE_WRAP).to(torch.uint8))
            for _ in range(samples):
                out_image, out_mask = transform(image, mask)
                out_image, out_mask = out_image.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor)
                seen = out_image[axis]
                inside = (out_mask != 255) & (out_image[0] >= margin) & (out_image[1] >= margin)
                inside &= (out_image[0] <= width - 1 - margin) & (out_image[1] <= height - 1 - margin)
                diff = torch.remainder(seen - out_mask.float() + PROBE_WRAP / 2, PROBE_WRAP) - PROBE_WRAP / 2
                agree += int((diff.abs() <= 0.5 + 1e-3)[inside].sum())
                total += int(inside.sum())
    finally:
        torch.set_rng_state(torch_state)
    return 100.0 * agree / max(total, 1)


PROBE_WRAP = 250  # mask coordinates wrap below the ignore value


def _probe_size(dcfg: DictConfig) -> tuple[int, int]:
    crop = dcfg.transform.get("crop")
    if crop is not None and crop != "auto":
        return int(crop[0]), int(crop[1])
    if dcfg.transform.get("resize") is not None:
        return int(dcfg.transform.resize[0]), int(dcfg.transform.resize[1])
    return 64, 64


def preflight(dcfg: DictConfig, skip_bad: bool) -> dict[str, list[str]]:
    """Check a dataset before training. Errors raise one DataError, unless `skip_bad`:
    then the bad pairs are excluded (`dcfg.exclude`) and returned, split -> stems."""
    report = check_dataset(dcfg)
    errors = report.errors
    fatal = [
        p
        for p in errors
        if p.path.startswith("dataset.transform")
        or "folder not found" in p.message
        or "empty split" in p.message
        or "every pixel is ignore" in p.message
    ]
    if errors and (not skip_bad or fatal):
        first = (fatal or errors)[0]
        more = f" (and {len(errors) - 1} more: segaudit data check)" if len(errors) > 1 else ""
        hint = "" if fatal else "; --skip-bad trains on the rest"
        raise DataError(f"{first.path}: {first.message}{more}{hint}")
    with open_dict(dcfg):
        dcfg.exclude = {split: list(stems) for split, stems in report.bad_stems.items()}
    return dict(report.bad_stems)
