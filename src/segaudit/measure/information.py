"""Per-image evidence of a predictor on labelled images: log-likelihood in bits and the
per-class counts behind IoU, kept image by image so that intervals can be bootstrapped
over images and two predictors compared on the same images (`segaudit.measure.evidence`).

mIoU looks only at the argmax and moves late; the per-pixel log-likelihood of the true
label moves as soon as a model's probabilities carry anything about the image. Both are
kept for every image: the summed negative log-likelihood (bits), the labelled pixel
count, and per class the true positives, ground-truth and predicted pixels (the sums of
the confusion matrix's diagonal, rows and columns, which is all IoU needs).

`ImageScores` accumulates a model's per-image numbers on the device without a host
sync; `PerImage` is the result as numpy arrays, saved beside a run's record
(`per_image.npz`, read back without pickle).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from segaudit.runs.records import atomic_write

PER_IMAGE_FILE = "per_image.npz"
LOG2E = 1.0 / math.log(2.0)  # nats -> bits
FIELDS = ("nll", "pixels", "tp", "gt", "pred")


@dataclass
class PerImage:
    """One predictor on N labelled images (ignore pixels left out everywhere).

    `nll`: summed negative log2-likelihood of the true labels per image (bits; NaN when
    the predictor gives no probabilities); `pixels`: labelled pixels per image;
    `tp`, `gt`, `pred`: N x K true positives, ground-truth and predicted pixel counts.
    """

    nll: np.ndarray
    pixels: np.ndarray
    tp: np.ndarray
    gt: np.ndarray
    pred: np.ndarray

    def __len__(self) -> int:
        return len(self.pixels)

    @property
    def bits_per_pixel(self) -> float:
        """Mean negative log2-likelihood per labelled pixel over all images."""
        total = float(self.pixels.sum())
        return float(self.nll.sum()) / total if total else math.nan

    def iou(self) -> np.ndarray:
        """Per-class IoU in percent over all images (NaN for a class absent from both)."""
        tp, gt, pred = self.tp.sum(0), self.gt.sum(0), self.pred.sum(0)
        union = gt + pred - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan) * 100.0

    def miou(self) -> float:
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}/{name}": getattr(self, name) for name in FIELDS}


def save_per_image(path: Path, entries: dict[str, PerImage], stems: list[str]) -> None:
    """Write `entries` (key -> PerImage, e.g. "300/real") and the image stems they are
    indexed by to one `.npz`, replaced atomically."""
    arrays = {"stems": np.asarray(stems, dtype=str)}
    for key, scores in entries.items():
        arrays.update(scores.arrays(key))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write(Path(path), lambda fh: fh.write(buffer.getvalue()), binary=True)


def load_per_image(path: Path) -> tuple[dict[str, PerImage], list[str]]:
    """The entries and stems `save_per_image` wrote (no pickle is ever loaded).

    Raises:
        ValueError: the file is not such an archive (a missing field, mismatched lengths).
    """
    with np.load(Path(path), allow_pickle=False) as data:
        stems = [str(s) for s in data["stems"]]
        keys = sorted({name.rsplit("/", 1)[0] for name in data.files if "/" in name})
        entries = {}
        for key in keys:
            fields = {name: np.asarray(data[f"{key}/{name}"]) for name in FIELDS}
            if any(len(v) != len(stems) for v in fields.values()):
                raise ValueError(f"{path}: entry {key} does not have one row per image")
            entries[key] = PerImage(**fields)
    return entries, stems


class ImageScores:
    """Streaming per-image accumulator: `update()` per batch with the batch's dataset
    indices, `compute()` once at the end. Counts stay on the device until then; under
    DDP every rank fills its own images and `compute()` sums the ranks' arrays."""

    def __init__(self, num_classes: int, ignore_index: int, n_images: int):
        self.num_classes, self.ignore_index, self.n_images = num_classes, ignore_index, n_images
        self.sums: dict[str, torch.Tensor] | None = None

    def _init(self, device: torch.device) -> None:
        n, k = self.n_images, self.num_classes
        self.sums = {
            "nll": torch.zeros(n, dtype=torch.float64, device=device),
            **{
                name: torch.zeros(n * k if name != "pixels" else n, dtype=torch.long, device=device)
                for name in FIELDS[1:]
            },
        }

    def update(
        self, indices: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, pred: torch.Tensor | None = None
    ) -> None:
        """Add a batch: `logits` N x K x H x W at the labels' size, `target` N x H x W,
        `indices` the N images' positions in the dataset (`pred`: the argmax, if known)."""
        if self.sums is None:
            self._init(logits.device)
        k = self.num_classes
        indices = indices.to(logits.device).long()
        target = target.long()
        valid = (target != self.ignore_index) & (target >= 0) & (target < k)
        safe = torch.where(valid, target, torch.zeros_like(target))
        logits = logits.float()
        # -log p(y) = logsumexp(logits) - logit_y, without a second K x H x W tensor
        nll = (torch.logsumexp(logits, 1) - logits.gather(1, safe[:, None])[:, 0]) * valid
        pred = logits.argmax(1) if pred is None else pred
        per_image = indices[:, None, None].expand_as(target)
        slot = per_image * k
        ones = valid.long()
        self.sums["nll"].index_add_(0, indices, nll.flatten(1).sum(1).double() * LOG2E)
        self.sums["pixels"].index_add_(0, indices, ones.flatten(1).sum(1))
        self.sums["gt"].index_add_(0, (slot + safe).reshape(-1), ones.reshape(-1))
        self.sums["pred"].index_add_(0, (slot + pred).reshape(-1), ones.reshape(-1))
        self.sums["tp"].index_add_(0, (slot + safe).reshape(-1), (valid & (pred == safe)).long().reshape(-1))

    def compute(self) -> PerImage:
        if self.sums is None:
            self._init(torch.device("cpu"))
        if dist.is_available() and dist.is_initialized():
            for value in self.sums.values():
                dist.all_reduce(value)
        n, k = self.n_images, self.num_classes
        host = {name: value.cpu().numpy() for name, value in self.sums.items()}
        return PerImage(
            nll=host["nll"], pixels=host["pixels"], **{name: host[name].reshape(n, k) for name in ("tp", "gt", "pred")}
        )


def label_scores(
    log_probs: np.ndarray | None, predicted: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int
) -> dict[str, np.ndarray | float]:
    """One image's `PerImage` row for a predictor that ignores the image: `log_probs`
    K x H x W (log2, at the label's size; None: no probabilities, NaN nll) and its
    `predicted` H x W class map, against `target` H x W."""
    valid = target != ignore_index
    labels = target[valid].astype(np.int64)
    pred = predicted[valid].astype(np.int64)
    if log_probs is None:
        nll = math.nan
    else:
        ys, xs = np.nonzero(valid)
        nll = float(-log_probs[labels, ys, xs].astype(np.float64).sum())
    k = num_classes
    return {
        "nll": nll,
        "pixels": int(valid.sum()),
        "tp": np.bincount(labels[labels == pred], minlength=k)[:k],
        "gt": np.bincount(labels, minlength=k)[:k],
        "pred": np.bincount(pred, minlength=k)[:k],
    }


def stack_rows(rows: list[dict]) -> PerImage:
    """`label_scores` rows, one per image in order, as a `PerImage`."""
    return PerImage(
        nll=np.array([r["nll"] for r in rows], dtype=np.float64),
        pixels=np.array([r["pixels"] for r in rows], dtype=np.int64),
        **{name: np.stack([r[name] for r in rows]).astype(np.int64) for name in ("tp", "gt", "pred")},
    )
