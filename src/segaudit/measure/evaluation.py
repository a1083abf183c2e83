"""Evaluation: per-pixel predictions of a model and dataset-level metrics over a loader."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from segaudit.core.devices import autocast
from segaudit.measure.information import ImageScores
from segaudit.measure.metrics import ConfusionMatrix
from segaudit.models.inference import Inference, model_stride


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype | None,
    size=None,
    infer: Inference | None = None,
) -> torch.Tensor:
    """Logits (N x K x H x W) of `model` on a batch, run the way `infer` says (default:
    whole image, padded to the model's stride), at `size` (default: the input's)."""
    infer = infer or Inference(multiple=model_stride(model))
    with autocast(device, dtype):
        logits = infer(model, images)
    size = tuple(size or images.shape[-2:])
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits.float(), size=size, mode="bilinear")
    return logits


def predict_labels(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    dtype: torch.dtype | None,
    size=None,
    infer: Inference | None = None,
) -> torch.Tensor:
    """Per-pixel class ids (N x H x W) of `model` on a batch (see `predict_logits`)."""
    return predict_logits(model, images, device, dtype, size, infer).argmax(1)


def batch_indices(loader: DataLoader) -> list[torch.Tensor]:
    """The dataset positions of each batch `loader` yields, in order (through a `Subset`,
    the positions in the dataset under it)."""
    dataset = loader.dataset
    outer = list(dataset.indices) if isinstance(dataset, Subset) else None
    return [torch.tensor([outer[i] for i in batch] if outer else list(batch)) for batch in loader.batch_sampler]


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    images_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    infer: Inference | None = None,
    scores: ImageScores | None = None,
) -> dict:
    """Dataset-level metrics of `model` over `loader` (see `segaudit.measure.metrics`).

    `images_fn` replaces each batch's images on the device (the noise/blank conditions);
    `infer` says how the model sees each image (`segaudit.models.inference`; default whole);
    `scores`, when given, also receives every image's log-likelihood and class counts
    (`segaudit.measure.information`), indexed by the image's position in the dataset.
    """
    was_training = model.training
    model.eval()
    metric = ConfusionMatrix(num_classes, ignore_index)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    indices = batch_indices(loader) if scores is not None else None
    for batch, (images, target) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        if images_fn is not None:
            images = images_fn(images)
        images = images.contiguous(memory_format=memory_format)
        target = target.to(device, non_blocking=True)
        logits = predict_logits(model, images, device, dtype, target.shape[-2:], infer)
        pred = logits.argmax(1)
        metric.update(pred, target)
        if scores is not None:
            scores.update(indices[batch], logits, target, pred)
    if dist.is_available() and dist.is_initialized():
        metric.all_reduce(device)
    model.train(was_training)
    return metric.compute()
