"""Segmentation models from segmentation-models-pytorch, built from `conf/model/*.yaml`."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from segaudit.errors import ConfigError

# Weight names smp knows how to fetch from a hub (needs a network).
_HUB_WEIGHTS = {"imagenet", "ssl", "swsl", "instagram", "advprop", "noisy-student",
                "imagenet+background", "imagenet+5k"}


def build_model(mcfg: DictConfig, num_classes: int) -> nn.Module:
    """Instantiate `mcfg.net` with the chosen encoder and load encoder weights.

    `mcfg.encoder_weights` is null (random init, the default: nothing is downloaded),
    a hub name such as `imagenet` (smp downloads it), or a path to a local encoder
    `state_dict` file (`.pth`/`.pt`, loaded with `weights_only=True`).

    Raises:
        ConfigError: unknown encoder, or an encoder weights file that is missing or
            does not fit the encoder.
    """
    weights = mcfg.get("encoder_weights")
    hub_weights = weights if weights in _HUB_WEIGHTS else None
    try:
        model = instantiate(
            mcfg.net, encoder_name=mcfg.encoder, encoder_weights=hub_weights, classes=num_classes
        )
    except Exception as err:  # smp raises KeyError/ValueError/RuntimeError for bad encoders
        cause = err.__cause__ or err
        raise ConfigError(f"model.encoder={mcfg.encoder}: cannot build model ({cause})") from None
    if weights is not None and hub_weights is None:
        load_encoder_weights(model, Path(str(weights)).expanduser())
    return model


def load_encoder_weights(model: nn.Module, path: Path) -> None:
    """Load a local encoder state_dict into `model.encoder` (strict)."""
    if not path.is_file():
        raise ConfigError(f"model.encoder_weights: {path} is not a file (nor a hub weight name)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"{path}: cannot read encoder weights ({err})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"{path}: weights do not fit encoder ({first})") from None
