"""Frozen-backbone probe: does the encoder hold semantic content a corrected head could use?

The model's encoder is frozen and a light linear head (per-channel standardisation, then a
1x1 convolution) is trained on its features for `backbone_probe.iters` steps. The same
probe runs on a randomly initialised encoder of the same architecture: random
convolutions already pass colour and edges through, so "the probe beats the prior" says
little, while "the trained encoder beats a random one" says the encoder learned content.
The analytic prior is the third reference. This decides between retraining and reusing
the encoder as a frozen backbone, which the investigation leaves open.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from itertools import cycle

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from segaudit.core.errors import ConfigError
from segaudit.data import build_dataset, eval_loader
from segaudit.measure.metrics import ConfusionMatrix
from segaudit.measure.prior import analytic_prior
from segaudit.models.inference import DEFAULT_STRIDE, pad_to_multiple
from segaudit.train.engine import seed_everything


def find_encoder(model: nn.Module) -> nn.Module:
    """The feature extractor of a loaded model: smp's `encoder` (through segaudit's and the
    card's wrappers) or torchvision's `backbone`.

    Raises:
        ConfigError: the model exposes neither (TorchScript, ONNX, other layouts).
    """
    inner = model
    for attribute in ("module", "_orig_mod", "model", "net"):  # DDP, compile, card adapter, aux wrapper
        if not hasattr(inner, "encoder") and not hasattr(inner, "backbone"):
            inner = getattr(inner, attribute, inner)
    encoder = getattr(inner, "encoder", None) or getattr(inner, "backbone", None)
    if not isinstance(encoder, nn.Module):
        raise ConfigError(
            f"{type(inner).__name__}: no `encoder` (smp) or `backbone` (torchvision) to "
            f"probe; the probe needs the model's modules, not a compiled or exported graph"
        )
    return encoder


def probe_features(encoder: nn.Module, images: torch.Tensor, which: str) -> torch.Tensor:
    """`deepest`: the encoder's last feature map; `concat`: every stage at stride 4 or
    coarser, resized to the finest of them and concatenated (smp returns a list of
    stages, torchvision an OrderedDict)."""
    features = encoder(images)
    if isinstance(features, dict):
        features = list(features.values())
    if not isinstance(features, (list, tuple)):
        return features
    if which == "deepest":
        return features[-1]
    stages = [f for f in features if f.dim() == 4 and f.shape[-1] <= images.shape[-1] // 4]
    size = stages[0].shape[-2:]
    return torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in stages], 1)


class LinearHead(nn.Module):
    """Per-channel standardisation (BatchNorm without affine) and a 1x1 convolution."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.classify = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.classify(self.norm(features)), size=size, mode="bilinear", align_corners=False)


def random_copy(encoder: nn.Module, seed: int) -> nn.Module:
    """The same architecture with every layer's parameters (and norm statistics) re-drawn."""
    fresh = copy.deepcopy(encoder)
    torch.manual_seed(seed)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
    return fresh


def probe_encoder(encoder: nn.Module, dcfg: DictConfig, settings: DictConfig, device: torch.device, seed: int) -> dict:
    """Train a linear head on the frozen `encoder`'s deepest features; its val metrics."""
    encoder = encoder.to(device).eval().requires_grad_(False)
    num_classes, ignore_index = int(dcfg.num_classes), int(dcfg.ignore_index)
    seed_everything(seed)
    train_set = build_dataset(dcfg, "train", train=True)
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=int(settings.batch_size),
        shuffle=True,
        drop_last=len(train_set) > int(settings.batch_size),
        generator=torch.Generator().manual_seed(seed),
    )
    head = None
    batches = cycle(loader)
    for _ in range(int(settings.iters)):
        images, masks = next(batches)
        images, masks = images.to(device), masks.to(device).long()
        with torch.no_grad():
            features = probe_features(encoder, pad_to_multiple(images, DEFAULT_STRIDE), str(settings.features))
        if head is None:
            head = LinearHead(features.shape[1], num_classes).to(device)
            optimizer = torch.optim.AdamW(head.parameters(), lr=float(settings.lr))
        padded = pad_to_multiple(masks, DEFAULT_STRIDE, value=ignore_index)
        loss = F.cross_entropy(head(features, padded.shape[-2:]), padded, ignore_index=ignore_index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return _evaluate(encoder, head.eval(), dcfg, device, str(settings.features))


@torch.inference_mode()
def _evaluate(encoder: nn.Module, head: LinearHead, dcfg: DictConfig, device: torch.device, which: str) -> dict:
    metric = ConfusionMatrix(int(dcfg.num_classes), int(dcfg.ignore_index))
    for images, masks in eval_loader(build_dataset(dcfg, "val", train=False), 8):
        images, masks = images.to(device), masks.to(device)
        padded = pad_to_multiple(images, DEFAULT_STRIDE)
        logits = head(probe_features(encoder, padded, which), padded.shape[-2:])
        metric.update(logits[..., : images.shape[-2], : images.shape[-1]].argmax(1), masks)
    return metric.compute()


def check_probe_settings(settings: DictConfig) -> None:
    """Refuse bad `backbone_probe.*` values before anything is loaded or written."""
    for key in ("iters", "batch_size"):
        value = settings.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"backbone_probe.{key}={value!r}: need a whole number >= 1")
    if settings.features not in ("deepest", "concat"):
        raise ConfigError(f"backbone_probe.features={settings.features!r}: choose deepest or concat")
    if not isinstance(settings.lr, (int, float)) or settings.lr <= 0:
        raise ConfigError(f"backbone_probe.lr={settings.lr!r}: need a positive number")


@dataclass
class BackboneProbe:
    """Linear heads on a frozen encoder and on a random one of the same architecture.

    Attributes:
        encoder: the head on the model's own encoder: metrics on val (`miou`, ...).
        random: the same head on a randomly initialised copy of the encoder.
        prior_miou: the analytic prior's mIoU on the same val split.
    """

    encoder: dict
    random: dict
    prior_miou: float


def probe_backbone(
    encoder: nn.Module, dcfg: DictConfig, settings: DictConfig, device: torch.device, seed: int
) -> BackboneProbe:
    """How much the encoder's features hold beyond a random encoder's and the prior."""
    return BackboneProbe(
        encoder=probe_encoder(encoder, dcfg, settings, device, seed),
        random=probe_encoder(random_copy(encoder, seed), dcfg, settings, device, seed),
        prior_miou=analytic_prior(dcfg).per_pixel["miou"],
    )
