"""A trained model on a few val images, drawn: what the pictures and the trackers show.

The training loop draws this grid for its trackers, so it sits in `train`, below
`report.pictures`, which draws the same grid for audits and suspect pairs.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from segaudit.core.config import load_group_option
from segaudit.data import build_dataset
from segaudit.data.conditions import DeviceImages
from segaudit.measure.evaluation import predict_labels
from segaudit.models.inference import Inference, build_inference


def shown_image(image: torch.Tensor, mean, std) -> np.ndarray:
    """A normalised 3 x H x W tensor back to the H x W x 3 uint8 picture the model saw."""
    mean_t = torch.tensor(list(mean)).view(-1, 1, 1)
    std_t = torch.tensor(list(std)).view(-1, 1, 1)
    return ((image * std_t + mean_t).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@torch.inference_mode()
def sample_predictions(
    model: torch.nn.Module,
    dcfg: DictConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    count: int = 4,
    infer: Inference | None = None,
) -> list[dict]:
    """The first `count` val samples with the model's predictions on them and on noise.

    Returns:
        Dicts with `image` (HxWx3 uint8, as the model saw it), `mask`, `pred_real` and
        `pred_noise` (HxW numpy arrays), for `sample_grid`.
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
        samples.append(
            {
                "image": shown_image(image, mean, std),
                "mask": mask.numpy(),
                "pred_real": pred_real.cpu().numpy(),
                "pred_noise": pred_noise.cpu().numpy(),
            }
        )
    return samples


def write_sample_grid(
    model: torch.nn.Module,
    dcfg: DictConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    path: Path,
    title: str,
    infer: Inference | None = None,
) -> Path:
    """`sample_predictions` drawn as an image / ground truth / real / noise grid."""
    samples = sample_predictions(model, dcfg, device, dtype, infer=infer)
    return sample_grid(
        samples, list(dcfg.class_names), int(dcfg.ignore_index), path, title, colors=dcfg.get("class_colors")
    )


def class_colors(num_classes: int, given: list | None = None) -> np.ndarray:
    """(K + 1) x 3 colours in [0, 1]: the dataset's own (`class_colors`, 0..255 RGB) or
    tab20 (hsv beyond 20 classes) per class, then black for ignore."""
    if given is not None and len(given) == num_classes:
        colors = np.asarray(given, dtype=np.float64) / 255.0
    elif num_classes <= 20:
        colors = plt.get_cmap("tab20")(np.arange(num_classes))[:, :3]
    else:
        colors = plt.get_cmap("hsv")(np.linspace(0, 1, num_classes, endpoint=False))[:, :3]
    return np.vstack([colors, [[0.0, 0.0, 0.0]]])


SAMPLE_COLUMNS = [
    ("image", "image"),
    ("mask", "ground truth"),
    ("pred_real", "prediction on real"),
    ("pred_noise", "prediction on noise"),
]


def sample_grid(
    samples: list[dict],
    class_names: list[str],
    ignore_index: int,
    path: Path,
    title: str = "",
    colors: list | None = None,
    columns: list[tuple[str, str]] = SAMPLE_COLUMNS,
) -> Path:
    """One row per sample: image | ground truth | prediction on real | prediction on noise.

    Args:
        samples: dicts with `image` (HxWx3 uint8), `mask`, `pred_real`, `pred_noise`
            (HxW class ids; `ignore_index` in the mask is drawn black), and optionally
            `label`, written left of the row.
        class_names: the legend.
        path: the PNG to write.
        colors: one 0..255 RGB triple per class (default: a qualitative palette).
        columns: (sample key, column title) pairs, left to right; keys ending in `image`
            are drawn as RGB.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    num_classes = len(class_names)
    palette = class_colors(num_classes, colors)
    cmap = ListedColormap(palette)
    fig, axes = plt.subplots(
        len(samples), len(columns), figsize=(2.5 * len(columns), 2.5 * len(samples) + 0.8), dpi=100, squeeze=False
    )
    for row, sample in enumerate(samples):
        for col, (key, label) in enumerate(columns):
            ax = axes[row, col]
            if key.endswith("image"):
                ax.imshow(sample[key])
            else:
                labels = np.asarray(sample[key]).astype(np.int64)
                labels = np.where((labels == ignore_index) | (labels >= num_classes), num_classes, labels)
                ax.imshow(labels, cmap=cmap, vmin=0, vmax=num_classes, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label, fontsize=10)
            if col == 0 and sample.get("label"):
                ax.set_ylabel(sample["label"], fontsize=8)
    shown = min(num_classes, 40)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in [*palette[:shown], palette[-1]]]
    fig.legend(
        handles, [*class_names[:shown], "ignore"], loc="lower center", ncol=min(shown + 1, 9), fontsize=7, frameon=False
    )
    if title:
        fig.suptitle(title, fontsize=10)
    legend_rows = shown // 9 + 1
    top = 1 - 0.3 / fig.get_figheight() if title else 1  # room for the title above the column titles
    fig.tight_layout(rect=(0, 0.1 * legend_rows / (len(samples) + 1), 1, top))
    fig.savefig(path)
    plt.close(fig)
    return path
