"""Segmentation models from segmentation-models-pytorch, built from `conf/model/*.yaml`."""

from __future__ import annotations

import difflib
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from segaudit.core.config import check_targets, safe_instantiate
from segaudit.core.errors import ConfigError, first_line
from segaudit.models.sources import load_weights_only

# Weight names smp knows how to fetch from a hub (needs a network).
_HUB_WEIGHTS = {
    "imagenet",
    "ssl",
    "swsl",
    "instagram",
    "advprop",
    "noisy-student",
    "imagenet+background",
    "imagenet+5k",
}


class ReconstructionHead(nn.Module):
    """Tier 2: a light decoder from the deepest encoder features back to the input image."""

    def __init__(self, in_channels: int, width: int = 64, out_channels: int = 3):
        super().__init__()
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.refine = nn.Sequential(
            nn.Conv2d(width, width // 2, 3, padding=1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(inplace=True)
        )
        self.out = nn.Conv2d(width // 2, out_channels, 3, padding=1)

    def forward(self, features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.reduce(features)
        x = F.interpolate(x, size=(max(1, size[0] // 4), max(1, size[1] // 4)), mode="bilinear")
        x = self.refine(x)
        return self.out(F.interpolate(x, size=size, mode="bilinear"))


class ProjectionHead(nn.Module):
    """Tier 3 (Wang et al., ICCV 2021): 1x1 conv, BN, ReLU, 1x1 conv to `dim`, L2-normalised."""

    def __init__(self, in_channels: int, dim: int = 256):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, dim, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(features), dim=1)


class SegmentationWithAux(nn.Module):
    """An smp model plus the heads loss tiers 2 and 3 need.

    `forward(x)` returns logits only (evaluation, audits); `forward(x, with_aux=True)`
    also returns the reconstruction of the input (tier 2) and the pixel embeddings
    (tier 3) from the same encoder and decoder pass. Both go through `forward`, so a
    DistributedDataParallel wrapper sees every pass and synchronises every gradient.
    """

    def __init__(self, net: nn.Module, reconstruction: bool, projection: bool, proj_dim: int = 256):
        super().__init__()
        self.net = net
        self.reconstruction = ReconstructionHead(net.encoder.out_channels[-1]) if reconstruction else None
        decoder_channels = net.segmentation_head[0].in_channels
        self.projection = ProjectionHead(decoder_channels, proj_dim) if projection else None

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def forward(self, images: torch.Tensor, with_aux: bool = False):
        if not with_aux:
            return self.net(images)
        features = self.net.encoder(images)
        decoded = self.net.decoder(features)
        logits = self.net.segmentation_head(decoded)
        aux = {}
        if self.reconstruction is not None:
            aux["reconstruction"] = self.reconstruction(features[-1], images.shape[-2:])
        if self.projection is not None:
            aux["embedding"] = self.projection(decoded)
        return logits, aux


def check_encoder(name: str) -> None:
    """Refuse an encoder smp does not know, naming close matches (smp's own error lists all
    of them in one 1,400-character line). `tu-*` names go to timm and are checked there."""
    if str(name).startswith("tu-"):
        return
    known = smp.encoders.get_encoder_names()
    if name not in known:
        close = difflib.get_close_matches(str(name), known, n=4, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "see smp.encoders.get_encoder_names()"
        raise ConfigError(f"model.encoder={name}: unknown encoder ({hint}; timm models as tu-NAME)")


def build_model(mcfg: DictConfig, num_classes: int, tiers=(0,)) -> nn.Module:
    """Instantiate `mcfg.net` with the chosen encoder and load encoder weights.

    With loss tier 2 or 3 in `tiers`, the model is wrapped in `SegmentationWithAux`
    (reconstruction and projection heads); otherwise it is the plain smp model.

    `mcfg.encoder_weights` is null (random init, the default: nothing is downloaded),
    a hub name such as `imagenet` (smp downloads it), or a path to a local encoder
    `state_dict` file (`.pth`/`.pt`, loaded with `weights_only=True`).

    Raises:
        ConfigError: a `_target_` segaudit does not build (`config.SAFE_TARGETS`), an
            unknown encoder, or an encoder weights file that is missing or does not fit.
    """
    weights = mcfg.get("encoder_weights")
    hub_weights = weights if weights in _HUB_WEIGHTS else None
    check_targets(mcfg.net, "model.net")  # before the try: a refusal is not a bad encoder
    check_encoder(mcfg.encoder)
    try:
        model = safe_instantiate(
            mcfg.net, "model.net", encoder_name=mcfg.encoder, encoder_weights=hub_weights, classes=num_classes
        )
    except Exception as err:  # smp raises KeyError/ValueError/RuntimeError for bad encoders
        raise ConfigError(
            f"model={mcfg.net._target_.rsplit('.', 1)[-1]} with encoder "
            f"{mcfg.encoder}: cannot build it ({first_line(err)[:200]})"
        ) from None
    if weights is not None and hub_weights is None:
        load_encoder_weights(model, Path(str(weights)).expanduser())
    tiers = set(tiers or ())
    if tiers & {2, 3}:
        return SegmentationWithAux(model, reconstruction=2 in tiers, projection=3 in tiers)
    return model


def load_encoder_weights(model: nn.Module, path: Path) -> None:
    """Load a local encoder state_dict into `model.encoder` (strict)."""
    if not path.is_file():
        raise ConfigError(f"model.encoder_weights: {path} is not a file (nor a hub weight name)")
    try:
        state = load_weights_only(path)
    except Exception as err:
        raise ConfigError(f"{path}: cannot read encoder weights ({err})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"{path}: weights do not fit encoder ({first_line(err)})") from None


def freeze_encoder(model: nn.Module) -> None:
    """Keep the encoder fixed: no gradients, and its normalisation statistics frozen.

    smp's own `freeze_encoder()` stops the parameters and the BatchNorm running stats and
    makes `model.train()` skip the encoder from then on. The whole encoder goes to eval
    mode here as well, so dropout and drop-path in it (SegFormer's MiT) stay off: a frozen
    encoder is a fixed feature extractor, in training and in evaluation alike.
    """
    net = getattr(model, "net", model)  # SegmentationWithAux wraps the smp model
    net.freeze_encoder()
    net.encoder.eval()
