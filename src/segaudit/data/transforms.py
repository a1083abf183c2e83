"""Joint image + mask transforms built on torchvision.transforms.v2.

Images travel as `tv_tensors.Image`, masks as `tv_tensors.Mask`; torchvision resizes
masks with nearest-neighbour and leaves them out of normalisation, so the pair stays
aligned through every geometric step.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


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
        return self._call_kernel(F.resize, inpt, size=params["size"], antialias=True)


def build_transform(tcfg: DictConfig, train: bool, ignore_index: int) -> v2.Compose:
    """Training (rescale, crop, flip) or evaluation (fixed resize) pipeline.

    Both end with float conversion and normalisation of the image only; the mask
    stays integer class ids. Crops pad images with 0 and masks with `ignore_index`.
    """
    steps: list[v2.Transform] = []
    if tcfg.resize is not None:
        steps.append(v2.Resize(list(tcfg.resize), antialias=True))
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
