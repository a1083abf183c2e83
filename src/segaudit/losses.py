"""The loss tiers. Tier 0 is pixel-wise cross-entropy; tiers 1-3 compose on top of it.

Tier 1 (input consistency) penalises predictions that change when the image gets a
little Gaussian noise. What it cannot do: a model that ignores the image and outputs the
location prior is perfectly consistent, so tier 1 cannot pull a noise-trained model
below the prior; it only shapes models that already read the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segaudit.errors import ConfigError

IMPLEMENTED_TIERS = (0, 1)


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
        consistency_weight: tier-1 weight (the investigation's 0.1).
        consistency_sigma: tier-1 noise std on the [0, 1] image (the investigation's 0.05).
        consistency_detach_clean: stop the gradient through the clean prediction, so
            only the perturbed branch is pulled toward it.
        image_std: the dataset's normalisation std, to express sigma on [0, 1] images.
    """

    def __init__(self, ignore_index: int = 255, tiers=(0,), class_weights=None,
                 consistency_weight: float = 0.1, consistency_sigma: float = 0.05,
                 consistency_detach_clean: bool = False, image_std=(1.0, 1.0, 1.0)):
        super().__init__()
        self.consistency_weight = float(consistency_weight)
        self.consistency_sigma = float(consistency_sigma)
        self.consistency_detach_clean = bool(consistency_detach_clean)
        self.register_buffer("image_std", torch.tensor(list(image_std), dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
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
        total, terms = ce, {"ce": ce.detach()}
        if 1 in self.tiers and self.consistency_weight:
            # Images arrive normalised: sigma on [0, 1] is sigma / std per channel here.
            noisy = images + torch.randn_like(images) * (self.consistency_sigma / self.image_std)
            clean = logits.detach() if self.consistency_detach_clean else logits
            term = self.consistency(clean, model(noisy), target) * self.consistency_weight
            total = total + term
            terms["consistency"] = term.detach()
        return LossOutput(total=total, terms=terms, logits=logits)

    def consistency(self, clean: torch.Tensor, noisy: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """KL(p_clean || p_noisy) per pixel, averaged over labelled pixels (tier 1)."""
        log_p = clean.float().log_softmax(1)
        log_q = noisy.float().log_softmax(1)
        kl = (log_p.exp() * (log_p - log_q)).sum(1)
        valid = (target != self.ignore_index).to(kl.dtype)
        return (kl * valid).sum() / valid.sum().clamp(min=1)

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
