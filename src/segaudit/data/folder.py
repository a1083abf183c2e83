"""Images and masks in folders, paired by file stem."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from segaudit.core.errors import DataError, first_line

MAX_LISTED = 8


@dataclass(frozen=True)
class Sample:
    """One image/mask pair; `stem` is the path relative to the split folder minus suffix."""

    stem: str
    image: Path
    mask: Path


def walk_files(folder: Path, suffix: str) -> list[Path]:
    """Files under `folder` ending in `suffix`, sorted, following symlinked sub-folders.

    Datasets are often assembled from links (`images/train/cityB -> /data/cityB`), so
    links are followed; a link back to a folder already walked is skipped, so a loop
    cannot recurse forever.
    """
    found, seen = [], set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        found += [Path(current) / name for name in files if name.endswith(suffix)]
    return sorted(found)


def list_by_stem(folder: Path, suffix: str) -> dict[str, Path]:
    """`stem -> path` of the files under `folder` ending in `suffix`; the stem is the path
    relative to `folder` with the suffix cut off (so sub-folders are part of it)."""
    return {p.relative_to(folder).as_posix()[: -len(suffix)]: p for p in walk_files(folder, suffix)}


def pairing_hint(image_stems: set[str], mask_stems: set[str], mask_suffix: str) -> str:
    """Why images and masks that look related do not pair, when it can be told.

    Two layouts account for most zero-pair splits: masks named with an extra tail
    (`0001_mask.png` for `0001.png`) and images in sub-folders while masks are flat (or
    the other way round).
    """
    if not image_stems or not mask_stems:
        return ""
    names = lambda stems: {s.rsplit("/", 1)[-1] for s in stems}  # noqa: E731
    image_names, mask_names = names(image_stems), names(mask_stems)
    if image_names & mask_names:
        return "; the file names match but the sub-folders differ (images and masks must be nested alike)"
    image, mask = min(image_names), min(mask_names)
    if mask.startswith(image):
        suffix = mask[len(image) :] + mask_suffix
        return f"; masks seem to be named <stem>{suffix}: set dataset.layout.mask_suffix={suffix}"
    return ""


def short_list(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def pair_files(
    image_dir: Path, mask_dir: Path, image_suffix: str, mask_suffix: str, allow_orphans: bool = False
) -> list[Sample]:
    """Pair `image_dir/**/<stem><image_suffix>` with `mask_dir/**/<stem><mask_suffix>`.

    Raises:
        DataError: a folder is missing or empty, or some files have no partner (the
            message lists the orphans) unless `allow_orphans`.
    """
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found (check dataset.root and dataset.layout)")
    images = list_by_stem(image_dir, image_suffix)
    masks = list_by_stem(mask_dir, mask_suffix)
    if not images:
        raise DataError(f"{image_dir}: no *{image_suffix} images (dataset.layout.image_suffix)")
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    paired = set(images) & set(masks)
    if (lonely_images or lonely_masks) and (not allow_orphans or not paired):
        parts = []
        if lonely_images:
            files = [images[s].name for s in lonely_images]
            parts.append(f"{len(files)} image(s) without mask in {mask_dir}: {short_list(files)}")
        if lonely_masks:
            files = [masks[s].name for s in lonely_masks]
            parts.append(f"{len(files)} mask(s) without image in {image_dir}: {short_list(files)}")
        hint = pairing_hint(set(images), set(masks), mask_suffix)
        raise DataError("files do not pair by stem: " + "; ".join(parts) + hint)
    return [Sample(stem, images[stem], masks[stem]) for stem in sorted(paired)]


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except Exception as err:  # noqa: BLE001 - PIL raises many types for damaged files
        raise DataError(f"{path}: cannot decode image ({first_line(err)})") from None


def read_mask(path: Path) -> np.ndarray:
    """Decode a label map to HxW uint8 class ids (palette PNGs give their indices)."""
    try:
        with Image.open(path) as im:
            arr = np.array(im)
    except Exception as err:  # noqa: BLE001 - PIL raises many types for damaged files
        raise DataError(f"{path}: cannot decode mask ({first_line(err)})") from None
    if arr.ndim != 2:
        raise DataError(f"{path}: mask has {arr.shape[-1]} channels; expected one channel of class ids")
    if arr.dtype != np.uint8:
        if arr.max(initial=0) > 255:
            raise DataError(f"{path}: mask values up to {arr.max()} do not fit uint8 class ids")
        arr = arr.astype(np.uint8)
    return arr


class FolderDataset(Dataset):
    """Image/mask pairs through a joint transform.

    Args:
        samples: the pairs, from `pair_files`.
        transform: a joint transform taking (tv_tensors.Image, tv_tensors.Mask).
        cache_in_memory: decode every pair once up front (threaded) and keep the
            uint8 arrays; worth it for small datasets, where decode dominates.
        read_images: False for conditions whose images are made on the device: the
            image is a zero placeholder of the mask's size and no file is read.
        fit_images: resize an image to its mask's size instead of failing (for
            conditions that pair labels with another source's images).
        label_lut: 256-entry table mapping stored label ids to train ids (None: as stored).
    """

    def __init__(
        self,
        samples: list[Sample],
        transform: Callable,
        cache_in_memory: bool = False,
        read_images: bool = True,
        fit_images: bool = False,
        label_lut: np.ndarray | None = None,
    ):
        self.samples = samples
        self.label_lut = label_lut
        self.transform = transform
        self.read_images = read_images
        self.fit_images = fit_images
        self._cache: list[tuple[np.ndarray, np.ndarray]] | None = None
        if cache_in_memory:
            with ThreadPoolExecutor(max_workers=8) as pool:
                self._cache = list(pool.map(self._decode, range(len(samples))))

    @classmethod
    def from_arrays(cls, pairs: list[tuple[np.ndarray, np.ndarray]], transform: Callable) -> FolderDataset:
        """A dataset over decoded (image, mask) arrays, e.g. the alignment probe's."""
        dataset = cls([Sample(str(i), Path(), Path()) for i in range(len(pairs))], transform)
        dataset._cache = list(pairs)
        return dataset

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        mask = read_mask(sample.mask)
        if self.label_lut is not None:
            mask = self.label_lut[mask]
        if not self.read_images:
            return np.zeros((*mask.shape, 3), np.uint8), mask
        image = read_image(sample.image)
        if image.shape[:2] != mask.shape and self.fit_images:
            size = (mask.shape[1], mask.shape[0])
            image = np.array(Image.fromarray(image).resize(size, Image.BILINEAR))
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"{sample.mask}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        return image, mask

    def image_sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every sample as stored, from the masks' headers (nothing is decoded)."""
        if self._cache is not None:
            return [mask.shape for _, mask in self._cache]
        sizes = []
        for sample in self.samples:
            try:
                with Image.open(sample.mask) as im:
                    sizes.append((im.height, im.width))
            except Exception as err:  # noqa: BLE001 - PIL raises many types for damaged files
                raise DataError(f"{sample.mask}: cannot read mask ({first_line(err)})") from None
        return sizes

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The decoded, untransformed (image HxWx3, mask HxW) uint8 arrays."""
        return self._cache[index] if self._cache is not None else self._decode(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.pair(index)
        image_t = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        mask_t = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))
        image_t, mask_t = self.transform(image_t, mask_t)
        return image_t.as_subclass(torch.Tensor), mask_t.as_subclass(torch.Tensor).long()
