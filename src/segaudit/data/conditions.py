"""Input conditions: which images reach the model, for training and evaluation independently.

- `real`: the dataset's own images.
- `noise`, `blank`: made on the device from the batch's shape; no image is read or decoded.
- `shuffled`: a fixed derangement of the image/label pairing (every label gets another
  sample's image), the signature of a data-pipeline bug.
- `cross`: images of dataset B paired by sorted index with this dataset's labels.
- `generated`: images from another folder paired by stem with the real labels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from segaudit.core.errors import DataError
from segaudit.data.folder import Sample, list_by_stem, short_list

ON_DEVICE = ("noise", "blank")
REPAIRED = ("shuffled", "cross", "generated")  # image paths replaced, labels kept
KNOWN = ("real", *ON_DEVICE, *REPAIRED)


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation with no fixed point: `perm[i] != i` for every i.

    Built as one random cycle through all indices, so it exists for every n >= 2.
    """
    if n < 2:
        raise DataError("the shuffled condition needs at least 2 samples")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    perm = [0] * n
    for i in range(n):
        perm[order[i]] = order[(i + 1) % n]
    return perm


def condition_samples(samples: list[Sample], condition: DictConfig, dcfg: DictConfig, split: str) -> list[Sample]:
    """The (image, label) pairs a condition feeds the model; labels are never changed."""
    name = condition.name
    if name not in KNOWN:
        raise DataError(f"unknown condition '{name}' (choices: {', '.join(KNOWN)})")
    if name == "shuffled":
        perm = derangement(len(samples), int(condition.seed))
        return [Sample(s.stem, samples[j].image, s.mask) for s, j in zip(samples, perm)]
    if name == "cross":
        layout = condition.layout or dcfg.layout
        folder = Path(str(condition.root)).expanduser() / layout[split].images
        if not folder.is_dir():
            raise DataError(f"{folder}: cross-condition image folder not found (train/eval_condition.root)")
        images = [p for _, p in sorted(list_by_stem(folder, layout.image_suffix).items())]
        if not images:
            raise DataError(f"{folder}: no *{layout.image_suffix} images for the cross condition")
        return [Sample(s.stem, images[i % len(images)], s.mask) for i, s in enumerate(samples)]
    if name == "generated":
        root = Path(str(condition.root)).expanduser()
        folder = root / split if (root / split).is_dir() else root
        found = list_by_stem(folder, condition.image_suffix) if folder.is_dir() else {}
        missing = [s.stem + condition.image_suffix for s in samples if s.stem not in found]
        if missing:
            raise DataError(f"{folder}: {len(missing)} generated image(s) missing: {short_list(missing)}")
        return [Sample(s.stem, found[s.stem], s.mask) for s in samples]
    return samples


class DeviceImages:
    """Replaces a batch's images on the device for the `noise` and `blank` conditions.

    Images arrive normalised with the dataset's mean/std; generated images are drawn in
    [0, 1] RGB and normalised the same way; evaluation images are rounded to 8-bit levels.
    Training noise uses the global RNG (restored on resume); evaluation noise uses its own
    seeded generator so audits repeat.
    """

    def __init__(self, condition: DictConfig, mean, std, device: torch.device, seeded: bool):
        self.condition = condition
        self.mean = torch.tensor(list(mean), device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(list(std), device=device).view(1, -1, 1, 1)
        self.generator = None
        if seeded and condition.name == "noise":
            self.generator = torch.Generator(device=device).manual_seed(int(condition.seed))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        name = self.condition.name
        if name == "noise":
            if self.condition.distribution == "uniform":
                raw = torch.rand(images.shape, device=images.device, generator=self.generator)
            elif self.condition.distribution == "gaussian":
                raw = torch.randn(images.shape, device=images.device, generator=self.generator)
                raw = (raw * float(self.condition.std) + float(self.condition.mean)).clamp(0, 1)
            else:
                raise DataError(f"noise.distribution '{self.condition.distribution}': use uniform or gaussian")
        elif name == "blank":
            value = torch.tensor(list(self.condition.value), device=images.device).view(1, -1, 1, 1)
            raw = value.expand(images.shape)
        else:
            return images
        if self.generator is not None or name == "blank":
            # Evaluation inputs are 8-bit images, like real ones: exactly what the
            # predictions-only export writes to PNG (`segaudit.workflows.predictions`).
            raw = (raw * 255).round() / 255
        return ((raw - self.mean) / self.std).to(images.dtype)
