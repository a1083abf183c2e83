"""Joint image + mask transforms built on torchvision.transforms.v2.

Images travel as `tv_tensors.Image`, masks as `tv_tensors.Mask`; masks are left out of
normalisation and resampled nearest-neighbour, so the pair stays aligned through every
geometric step.

Resampling both with the same pixel-centre convention matters: torchvision resizes a
`Mask` with `NEAREST` by default, which takes source pixel floor(i * in / out), while
bilinear takes pixel centres, (i + 0.5) * in / out - 0.5. At any non-integer scale the
mask then sits up to one pixel off its image. Masks here use `NEAREST_EXACT`, which
takes floor((i + 0.5) * in / out): the pixel-centre convention of the bilinear image.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from segaudit.core.errors import DataError

MASK_INTERPOLATION = v2.InterpolationMode.NEAREST_EXACT


def resize_pair_item(inpt: Any, size: list[int]) -> Any:
    """Resize one item of an (image, mask) pair: bilinear with antialias for images,
    nearest-exact for masks, so both use pixel centres."""
    if isinstance(inpt, tv_tensors.Mask):
        return F.resize(inpt, size=size, interpolation=MASK_INTERPOLATION)
    if isinstance(inpt, tv_tensors.Image):
        return F.resize(inpt, size=size, interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    return inpt


class JointResize(v2.Transform):
    """Resize image and mask to a fixed [H, W] with aligned pixel centres."""

    def __init__(self, size: list[int]):
        super().__init__()
        self.size = [int(v) for v in size]

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return resize_pair_item(inpt, self.size)


class RandomRescale(v2.Transform):
    """Resize by a random factor of the input's own size (mmseg-style ratio range)."""

    def __init__(self, scale: tuple[float, float]):
        super().__init__()
        self.scale = (float(scale[0]), float(scale[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = next(F.get_size(x) for x in flat_inputs if isinstance(x, tv_tensors.Image))
        factor = torch.empty(1).uniform_(*self.scale).item()
        return {"size": [max(1, round(height * factor)), max(1, round(width * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return resize_pair_item(inpt, params["size"])


def build_transform(tcfg: DictConfig, train: bool, ignore_index: int) -> v2.Compose:
    """Training (resize, rescale, crop, flip) or evaluation pipeline.

    Both end with float conversion and normalisation of the image only; the mask
    stays integer class ids. Crops pad images with 0 and masks with `ignore_index`,
    so a crop larger than the (rescaled) image is filled with ignore, not stretched.
    Evaluation changes no geometry: labels are scored at their native resolution, and
    how the model sees a large image is `segaudit.models.inference`'s business.
    """
    if train and tcfg.get("crop") == "auto":
        raise DataError(
            "dataset.transform.crop is 'auto' but no training pair was found to size it "
            "(segaudit data check lists the files)"
        )
    steps: list[v2.Transform] = []
    if train and tcfg.resize is not None:
        steps.append(JointResize(list(tcfg.resize)))
    if train:
        lo, hi = tcfg.scale
        if (lo, hi) != (1.0, 1.0):
            steps.append(RandomRescale((lo, hi)))
        if tcfg.crop is not None:
            fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}
            steps.append(v2.RandomCrop(list(tcfg.crop), pad_if_needed=True, fill=fill))
        if tcfg.hflip:
            steps.append(v2.RandomHorizontalFlip(p=float(tcfg.hflip)))
    steps += [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=list(tcfg.mean), std=list(tcfg.std)),
    ]
    return v2.Compose(steps)
