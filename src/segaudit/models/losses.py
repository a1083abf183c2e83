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

from segaudit.core.errors import ConfigError
from segaudit.models.build import SegmentationWithAux

IMPLEMENTED_TIERS = (0, 1, 2, 3)


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
        reconstruction_weight: tier-2 weight on the MSE between the reconstruction and
            the (normalised) input image (the investigation's 0.5).
        contrast_weight, contrast_temperature, contrast_base_temperature: tier-3 weight
            (0.1) and the SupCon temperatures (0.1, scaled by T / 0.07 as in the paper's code).
        contrast_max_samples, contrast_max_views: anchors per batch, and per image and class.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        tiers=(0,),
        class_weights=None,
        consistency_weight: float = 0.1,
        consistency_sigma: float = 0.05,
        consistency_detach_clean: bool = False,
        image_std=(1.0, 1.0, 1.0),
        reconstruction_weight: float = 0.5,
        contrast_weight: float = 0.1,
        contrast_temperature: float = 0.1,
        contrast_base_temperature: float = 0.07,
        contrast_max_samples: int = 1024,
        contrast_max_views: int = 100,
    ):
        super().__init__()
        self.reconstruction_weight = float(reconstruction_weight)
        self.contrast_weight = float(contrast_weight)
        self.contrast_temperature = float(contrast_temperature)
        self.contrast_base_temperature = float(contrast_base_temperature)
        self.contrast_max_samples = int(contrast_max_samples)
        self.contrast_max_views = int(contrast_max_views)
        self.consistency_weight = float(consistency_weight)
        self.consistency_sigma = float(consistency_sigma)
        self.consistency_detach_clean = bool(consistency_detach_clean)
        self.register_buffer(
            "image_std", torch.tensor(list(image_std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        unknown = sorted(set(tiers) - set(IMPLEMENTED_TIERS))
        if unknown:
            raise ConfigError(f"loss.tiers: tier(s) {unknown} not available (have {IMPLEMENTED_TIERS})")
        self.ignore_index = ignore_index
        self.tiers = tuple(sorted(set(tiers) | {0}))
        weight = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("class_weights", weight, persistent=False)

    def forward(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> LossOutput:
        aux: dict[str, torch.Tensor] = {}
        if 2 in self.tiers or 3 in self.tiers:
            inner = getattr(model, "module", model)  # DistributedDataParallel
            inner = getattr(inner, "_orig_mod", inner)  # torch.compile
            if not isinstance(inner, SegmentationWithAux):
                raise ConfigError(
                    "loss tiers 2/3 need a model built with their heads "
                    "(segaudit.models.build.build_model(..., tiers=loss.tiers))"
                )
            logits, aux = model(images, with_aux=True)
        else:
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
        if 2 in self.tiers and self.reconstruction_weight:
            term = F.mse_loss(aux["reconstruction"].float(), images.float()) * self.reconstruction_weight
            total = total + term
            terms["reconstruction"] = term.detach()
        if 3 in self.tiers and self.contrast_weight:
            embedding = aux["embedding"].float()
            size = embedding.shape[-2:]
            labels = F.interpolate(target[:, None].float(), size=size, mode="nearest")[:, 0].long()
            preds = F.interpolate(logits.detach().argmax(1, keepdim=True).float(), size=size, mode="nearest")[
                :, 0
            ].long()
            feats, classes = sample_anchors(
                embedding, labels, preds, self.ignore_index, self.contrast_max_samples, self.contrast_max_views
            )
            term = (
                supervised_contrastive(feats, classes, self.contrast_temperature, self.contrast_base_temperature)
                * self.contrast_weight
            )
            total = total + term
            terms["contrast"] = term.detach()
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
            logits.float(),
            target,
            weight=self.class_weights,
            ignore_index=self.ignore_index,
            reduction="none",
        )
        valid = target != self.ignore_index
        if self.class_weights is None:
            denom = valid.sum().clamp(min=1)
        else:
            safe = target.clamp(0, self.class_weights.numel() - 1)
            denom = torch.where(valid, self.class_weights[safe], 0.0).sum().clamp(min=1e-12)
        return per_pixel.sum() / denom


def sample_anchors(
    embedding: torch.Tensor,
    labels: torch.Tensor,
    preds: torch.Tensor,
    ignore_index: int,
    max_samples: int = 1024,
    max_views: int = 100,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced anchor sampling with hard/easy halves (Wang et al., ICCV 2021).

    For every (image, class) present, take up to `n_view` pixel embeddings, half of them
    "hard" (the prediction is wrong) and half "easy"; when one kind is short the other
    fills in. `n_view = min(max_views, max_samples // number of (image, class) pairs)`.

    Args:
        embedding: B x D x h x w pixel embeddings.
        labels, preds: B x h x w ground truth and prediction at the embedding's size.

    Returns:
        (N x D embeddings, N class ids).
    """
    batch, dim = embedding.shape[:2]
    flat_emb = embedding.permute(0, 2, 3, 1).reshape(batch, -1, dim)
    flat_lab, flat_pred = labels.reshape(batch, -1), preds.reshape(batch, -1)
    groups = [(b, int(c)) for b in range(batch) for c in torch.unique(flat_lab[b]).tolist() if c != ignore_index]
    if not groups:
        return flat_emb.new_zeros(0, dim), flat_lab.new_zeros(0)
    n_view = max(1, min(max_views, max_samples // len(groups)))
    feats, classes = [], []
    for b, c in groups:
        here = flat_lab[b] == c
        hard = torch.nonzero(here & (flat_pred[b] != c)).flatten()
        easy = torch.nonzero(here & (flat_pred[b] == c)).flatten()
        want_hard = n_view // 2
        want_easy = n_view - want_hard
        if len(hard) < want_hard:
            want_easy = min(len(easy), n_view - len(hard))
            want_hard = len(hard)
        elif len(easy) < want_easy:
            want_hard = min(len(hard), n_view - len(easy))
            want_easy = len(easy)
        pick = torch.cat(
            [
                hard[torch.randperm(len(hard), generator=generator, device="cpu")[:want_hard].to(hard.device)],
                easy[torch.randperm(len(easy), generator=generator, device="cpu")[:want_easy].to(easy.device)],
            ]
        )
        feats.append(flat_emb[b, pick])
        classes.append(torch.full((len(pick),), c, device=pick.device, dtype=torch.long))
    return torch.cat(feats), torch.cat(classes)


def supervised_contrastive(
    feats: torch.Tensor, classes: torch.Tensor, temperature: float = 0.1, base_temperature: float = 0.07
) -> torch.Tensor:
    """Pixel-wise supervised contrastive loss over sampled anchors.

    For anchor i with positives P(i) (same class, not i) and negatives N(i):
    l_i = -(T / T_base) * mean_{p in P(i)} log( e^{z_i.z_p / T} / (e^{z_i.z_p / T} + sum_{n in N(i)} e^{z_i.z_n / T}) ),
    averaged over anchors that have a positive. Zero (but still in the graph) when there
    are no positives or no negatives.
    """
    if feats.shape[0] < 2:
        return feats.sum() * 0.0
    logits = feats @ feats.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    same = classes[:, None] == classes[None, :]
    eye = torch.eye(len(classes), dtype=torch.bool, device=feats.device)
    positives, negatives = same & ~eye, ~same
    has_pos = positives.any(1)
    if not has_pos.any() or not negatives.any():
        return feats.sum() * 0.0
    exp = logits.exp()
    negative_sum = (exp * negatives).sum(1, keepdim=True)
    log_prob = logits - torch.log(exp + negative_sum)
    mean_pos = (log_prob * positives).sum(1)[has_pos] / positives.sum(1)[has_pos]
    return -(temperature / base_temperature) * mean_pos.mean()
