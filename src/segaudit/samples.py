"""A trained model on a few val images, drawn: what the pictures and the trackers show.

Below `engine` and `pictures` alike (it needs only data, evaluation and plots), so a
training run can draw its own sample grid for a tracker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from segaudit.config import load_group_option
from segaudit.data import build_dataset
from segaudit.data.conditions import DeviceImages
from segaudit.evaluation import predict_labels
from segaudit.inference import Inference, build_inference
from segaudit.plots import sample_grid


def shown_image(image: torch.Tensor, mean, std) -> np.ndarray:
    """A normalised 3 x H x W tensor back to the H x W x 3 uint8 picture the model saw."""
    mean_t = torch.tensor(list(mean)).view(-1, 1, 1)
    std_t = torch.tensor(list(std)).view(-1, 1, 1)
    return ((image * std_t + mean_t).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@torch.inference_mode()
def sample_predictions(model: torch.nn.Module, dcfg: DictConfig, device: torch.device,
                       dtype: torch.dtype | None, count: int = 4,
                       infer: Inference | None = None) -> list[dict]:
    """The first `count` val samples with the model's predictions on them and on noise.

    Returns:
        Dicts with `image` (HxWx3 uint8, as the model saw it), `mask`, `pred_real` and
        `pred_noise` (HxW numpy arrays), for `plots.sample_grid`.
    """
    dataset = build_dataset(dcfg, "val", train=False)
    infer = infer or build_inference(model, dcfg)
    mean, std = dcfg.transform.mean, dcfg.transform.std
    noise = DeviceImages(load_group_option("condition", "noise"), mean, std, device, seeded=True)
    samples = []
    for index in range(min(count, len(dataset))):
        image, mask = dataset[index]
        batch = image.unsqueeze(0).to(device)
        pred_real = predict_labels(model, batch, device, dtype, infer=infer)[0]
        pred_noise = predict_labels(model, noise(batch), device, dtype, infer=infer)[0]
        samples.append({"image": shown_image(image, mean, std), "mask": mask.numpy(),
                        "pred_real": pred_real.cpu().numpy(), "pred_noise": pred_noise.cpu().numpy()})
    return samples


def write_sample_grid(model: torch.nn.Module, dcfg: DictConfig, device: torch.device,
                      dtype: torch.dtype | None, path: Path, title: str,
                      infer: Inference | None = None) -> Path:
    """`sample_predictions` drawn as an image / ground truth / real / noise grid."""
    samples = sample_predictions(model, dcfg, device, dtype, infer=infer)
    return sample_grid(samples, list(dcfg.class_names), int(dcfg.ignore_index), path, title,
                       colors=dcfg.get("class_colors"))
