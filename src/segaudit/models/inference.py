"""How a model is run on an evaluation image of any size: `whole`, `slide` or `resize`.

The three modes follow mmsegmentation's test-time conventions:

- `whole`: pad the image (bottom and right) to a multiple of the model's stride,
  predict, crop the logits back. The model sees the full image at its native size.
- `slide`: windows of `crop` [H, W] every `stride` [H, W] pixels, the last window of each
  row and column flush with the image's edge; overlapping logits are averaged. This is
  how the field evaluates Cityscapes models trained on 512x1024 crops.
- `resize`: resize the image to `size` [H, W], predict, resize the logits back.

In every mode the logits come back at the input's own size, so predictions are scored
at the label's native resolution. The settings live in `dataset.eval` (each preset's
convention, saved with its runs); the top-level `inference.*` keys override them for
one command, e.g. `segaudit audit model RUN inference.mode=slide`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from segaudit.core.errors import ConfigError

MODES = ("whole", "slide", "resize")
DEFAULT_STRIDE = 32  # when a model does not say: every smp encoder divides 32


def model_stride(model: nn.Module) -> int:
    """The multiple an input's height and width must be for `model` (smp: the encoder's
    output stride, e.g. 16 for DeepLabV3+ with output stride 16, 8 for PSPNet depth 3)."""
    inner = getattr(model, "module", model)  # DistributedDataParallel / compiled wrappers
    inner = getattr(inner, "_orig_mod", inner)
    inner = getattr(inner, "net", inner)  # SegmentationWithAux
    inner = getattr(inner, "model", inner) if not hasattr(inner, "encoder") else inner  # CardAdapter
    encoder = getattr(inner, "encoder", None)
    stride = getattr(encoder, "output_stride", None)
    return int(stride) if isinstance(stride, int) and stride > 0 else DEFAULT_STRIDE


def pad_to_multiple(tensor: torch.Tensor, multiple: int, value: float = 0.0) -> torch.Tensor:
    """Pad the last two dimensions at the bottom and right up to multiples of `multiple`."""
    height, width = tensor.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not (pad_h or pad_w):
        return tensor
    if tensor.dtype.is_floating_point:
        return F.pad(tensor, (0, pad_w, 0, pad_h), value=value)
    # integer masks: F.pad's constant mode needs a float tensor on some backends
    out = tensor.new_full((*tensor.shape[:-2], height + pad_h, width + pad_w), int(value))
    out[..., :height, :width] = tensor
    return out


def _pair(value, key: str) -> tuple[int, int] | None:
    if value is None:
        return None
    values = [value, value] if isinstance(value, int) else list(value)
    if len(values) != 2 or not all(isinstance(v, int) and v > 0 for v in values):
        raise ConfigError(f"{key}: expected [H, W] in pixels, got {value!r}")
    return int(values[0]), int(values[1])


@dataclass(frozen=True)
class Inference:
    """One evaluation mode with its sizes; call it to get logits at the input's size.

    Attributes:
        mode: `whole`, `slide` or `resize`.
        multiple: inputs are padded to multiples of this (the model's stride).
        crop, stride: the sliding window and its step ([H, W]), for `slide`.
        size: what the model sees ([H, W]), for `resize`.
    """

    mode: str = "whole"
    multiple: int = DEFAULT_STRIDE
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    size: tuple[int, int] | None = None

    def __call__(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Logits (N x K x H x W) of `model` for `images` (N x C x H x W)."""
        if self.mode == "slide":
            return self._slide(model, images)
        if self.mode == "resize":
            height, width = images.shape[-2:]
            small = F.interpolate(
                images,
                size=self.size,
                mode="bilinear",
                align_corners=False,
                antialias=self.size[0] < height or self.size[1] < width,
            )
            logits = self._whole(model, small)
            return F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
        return self._whole(model, images)

    def _whole(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        padded = pad_to_multiple(images, self.multiple)
        if images.is_contiguous(memory_format=torch.channels_last) and padded is not images:
            padded = padded.contiguous(memory_format=torch.channels_last)  # keep the fast layout
        logits = model(padded)
        if logits.shape[-2:] != padded.shape[-2:]:  # models whose logits come out smaller
            logits = F.interpolate(logits.float(), size=padded.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :height, :width]

    def _slide(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        total = count = None
        for top, left in window_origins((height, width), self.crop, self.stride):
            bottom, right = min(top + self.crop[0], height), min(left + self.crop[1], width)
            logits = self._whole(model, images[..., top:bottom, left:right]).float()
            if total is None:
                total = logits.new_zeros((images.shape[0], logits.shape[1], height, width))
                count = logits.new_zeros((1, 1, height, width))
            total[..., top:bottom, left:right] += logits
            count[..., top:bottom, left:right] += 1
        return total / count


def window_origins(size: tuple[int, int], crop: tuple[int, int], stride: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of the sliding windows over an image of `size` (mmseg's grid:
    ceil((H - crop) / stride) + 1 rows, the last one flush with the bottom edge)."""
    origins = []
    rows = max(size[0] - crop[0] + stride[0] - 1, 0) // stride[0] + 1
    cols = max(size[1] - crop[1] + stride[1] - 1, 0) // stride[1] + 1
    for row in range(rows):
        for col in range(cols):
            top = max(min(row * stride[0], size[0] - crop[0]), 0)
            left = max(min(col * stride[1], size[1] - crop[1]), 0)
            origins.append((top, left))
    return origins


def inference_settings(dcfg: DictConfig, overrides: DictConfig | None = None) -> dict:
    """The dataset's `eval` block with the non-null keys of `overrides` (the top-level
    `inference` config) on top, checked. `whole` on a dataset with a train-time
    `transform.resize` becomes `resize` to that size.

    Raises:
        ConfigError: an unknown mode, or a mode without the sizes it needs.
    """
    settings = {"mode": "whole", "crop": None, "stride": None, "size": None}
    for source in (dcfg.get("eval"), overrides):
        for key, value in dict(source or {}).items():
            if value is not None:
                settings[key] = value
    train_resize = (dcfg.get("transform") or {}).get("resize")
    if settings["mode"] == "whole" and train_resize is not None:
        # A model trained on images resized to [H, W] sees that scale at evaluation too;
        # its labels are still scored at their native size.
        settings["mode"], settings["size"] = "resize", train_resize
    mode = str(settings["mode"])
    if mode not in MODES:
        raise ConfigError(f"inference.mode: '{mode}' is not one of {', '.join(MODES)}")
    crop = _pair(settings["crop"], "inference.crop")
    stride = _pair(settings["stride"], "inference.stride")
    size = _pair(settings["size"], "inference.size")
    if mode == "slide":
        if crop is None:
            raise ConfigError("inference.mode=slide needs inference.crop=[H,W] (the window)")
        stride = stride or (max(1, crop[0] * 2 // 3), max(1, crop[1] * 2 // 3))
    if mode == "resize" and size is None:
        raise ConfigError("inference.mode=resize needs inference.size=[H,W]")
    return {"mode": mode, "crop": crop, "stride": stride, "size": size}


def build_inference(model: nn.Module, dcfg: DictConfig, overrides: DictConfig | None = None) -> Inference:
    """The configured evaluation mode for `model` (padding to its stride)."""
    return Inference(multiple=model_stride(model), **inference_settings(dcfg, overrides))


def inference_record(infer: Inference) -> dict:
    """How a measurement ran the model, for its run record."""
    return {
        "mode": infer.mode,
        "multiple": infer.multiple,
        "crop": list(infer.crop) if infer.crop else None,
        "stride": list(infer.stride) if infer.stride else None,
        "size": list(infer.size) if infer.size else None,
    }
