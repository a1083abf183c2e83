"""Where a run runs: the torch device, the autocast dtype, and the facts recorded with it
(device name, package versions)."""

from __future__ import annotations

import platform
from contextlib import nullcontext

import torch

from segaudit.core.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: '{name}' is not a torch device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: CUDA is not available on this machine")
    return device


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default; off on CPU unless asked for."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if setting == "bf16":
        return torch.bfloat16
    if setting in ("off", "none", "fp32"):
        return None
    raise ConfigError(f"train.amp: '{setting}' is not one of auto, bf16, off")


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
