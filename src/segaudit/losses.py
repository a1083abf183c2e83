"""The loss tiers. Tier 0 is pixel-wise cross-entropy; tiers 1-3 compose on top of it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segaudit.errors import ConfigError

IMPLEMENTED_TIERS = (0,)


@dataclass
class LossOutput:
    """The total to backpropagate, each weighted term for logging, and the logits."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    logits: torch.Tensor


class TieredLoss(nn.Module):
    """Segmentation loss made of tiers; it runs the model so tiers can add forward passes.

    Args:
        ignore_index: target value excluded from every term.
        tiers: which tiers to use; tier 0 (cross-entropy) is always included.
        class_weights: optional per-class cross-entropy weights.
    """

    def __init__(self, ignore_index: int = 255, tiers=(0,), class_weights=None):
        super().__init__()
        unknown = sorted(set(tiers) - set(IMPLEMENTED_TIERS))
        if unknown:
            raise ConfigError(f"loss.tiers: tier(s) {unknown} not available (have {IMPLEMENTED_TIERS})")
        self.ignore_index = ignore_index
        self.tiers = tuple(sorted(set(tiers) | {0}))
        weight = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)

    def forward(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> LossOutput:
        logits = model(images)
        ce = self.cross_entropy(logits, target)
        return LossOutput(total=ce, terms={"ce": ce.detach()}, logits=logits)

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over labelled pixels (weighted like torch's `mean`); 0, not NaN, if none are.

        A random crop can hold only ignore pixels; torch's own mean would return NaN
        there and a NaN check would wrongly fail the run.
        """
        per_pixel = F.cross_entropy(
            logits.float(), target, weight=self.class_weights,
            ignore_index=self.ignore_index, reduction="none",
        )
        valid = target != self.ignore_index
        if self.class_weights is None:
            denom = valid.sum().clamp(min=1)
        else:
            safe = target.clamp(0, self.class_weights.numel() - 1)
            denom = torch.where(valid, self.class_weights[safe], 0.0).sum().clamp(min=1e-12)
        return per_pixel.sum() / denom
