"""Preprocessing probe: the commonest ways a model card is wrong, tried on a few val images.

An external model that scores near the prior may be a model that never learned content,
or a good model fed the wrong input: BGR instead of RGB, 0-255 instead of 0-1, no
normalisation, or class indices off by one. The probe re-scores the first few val images
with each of those changes and names the best one that scores much higher. It only
suggests: the audit's numbers and red flags stay those of the card as given.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations

import torch
from omegaconf import DictConfig
from torch.utils.data import Subset

from segaudit.core.devices import amp_dtype
from segaudit.data import build_dataset, eval_loader
from segaudit.measure.evaluation import evaluate
from segaudit.models.inference import build_inference
from segaudit.models.sources import CardAdapter, ModelCard


def _flip_channels(card: ModelCard) -> tuple[str, ModelCard]:
    channels = "rgb" if card.channels == "bgr" else "bgr"
    return f"channels={channels}", replace(card, channels=channels)


def _other_range(card: ModelCard) -> tuple[str, ModelCard]:
    current = card.input_range or 1
    other = 1 if current == 255 else 255
    factor = other / current  # stated mean/std are in the units of the range

    def scale(values: list[float] | None) -> list[float] | None:
        return None if values is None else [x * factor for x in values]

    return f"input_range={other}", replace(card, input_range=other, mean=scale(card.mean), std=scale(card.std))


def _no_normalisation(card: ModelCard) -> tuple[str, ModelCard]:
    return "mean=[0,0,0] std=[1,1,1]", replace(card, mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])


_INPUT_MISTAKES = (_flip_channels, _other_range, _no_normalisation)


def card_variants(card: ModelCard, num_classes: int) -> list[tuple[str, ModelCard]]:
    """The card with each usual input mistake undone, alone and combined, then with class
    indices shifted by one either way (model channel i = dataset class i +- 1)."""
    variants = []
    for size in (1, 2, 3):
        for changes in combinations(_INPUT_MISTAKES, size):
            names, changed = [], card
            for change in changes:
                name, changed = change(changed)
                names.append(name)
            variants.append((", ".join(names), changed))
    if card.class_map is None:
        for shift in (1, -1):
            shifted = [(i + shift) % num_classes for i in range(num_classes)]
            variants.append(
                (
                    f"class_map=[{', '.join(map(str, shifted[:3]))}, ...] (indices off by {shift:+d})",
                    replace(card, class_map=shifted),
                )
            )
    return variants


@torch.inference_mode()
def probe_card(cfg: DictConfig, adapter: CardAdapter, dcfg: DictConfig, device: torch.device, real_miou: float) -> dict:
    """Score each card variant on the first `cfg.audit.probe_images` val images.

    Returns:
        `baseline` (the card as given, on the same images), `tried` (variant -> mIoU),
        and `suggestion`: the best variant when it beats the baseline by at least
        `cfg.audit.probe_min_gain` points, else None.
    """
    val = build_dataset(dcfg, "val", train=False)
    images = Subset(val, range(min(int(cfg.audit.probe_images), len(val))))
    loader = eval_loader(images, int(cfg.train.eval_batch_size))
    dtype = amp_dtype(str(cfg.train.amp), device)
    num_classes, ignore_index = int(dcfg.num_classes), int(dcfg.ignore_index)

    infer = build_inference(adapter, dcfg, cfg.get("inference"))

    def score(model: CardAdapter) -> float:
        return float(evaluate(model, loader, num_classes, ignore_index, device, dtype, infer=infer)["miou"])

    baseline = score(adapter)
    tried = {}
    for name, card in card_variants(adapter.card, num_classes):
        variant = CardAdapter(
            adapter.model, card, adapter.data_mean.flatten().tolist(), adapter.data_std.flatten().tolist()
        ).to(device)
        tried[name] = score(variant)
    best = max(tried, key=tried.get)
    found = tried[best] - baseline >= float(cfg.audit.probe_min_gain)
    return {
        "images": len(images),
        "baseline": baseline,
        "tried": tried,
        "suggestion": {"change": best, "miou": tried[best]} if found else None,
        "audit_real_miou": real_miou,
    }
