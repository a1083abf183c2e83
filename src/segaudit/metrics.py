"""Dataset-level segmentation metrics from a confusion matrix (mmsegmentation convention).

Convention, stated once:
- one confusion matrix accumulated over the whole dataset (not a mean of per-image scores);
- pixels whose target is `ignore_index` are left out entirely;
- a class absent from both ground truth and prediction has IoU NaN and is left out of
  mIoU; a class predicted but absent from the ground truth has IoU 0 and counts;
- a class absent from the ground truth has accuracy NaN and is left out of mAcc.
All summary numbers are percentages. (smp's metrics would count absent classes as 1.0,
torchmetrics as 0 or -1 depending on options; ours leaves them out, as mmseg does.)
"""

from __future__ import annotations

import math

import torch


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Count (ground truth, prediction) pairs.

    Args:
        pred: integer class predictions, any shape.
        target: integer ground truth, same shape; `ignore_index` pixels are skipped.
        num_classes: K.
        ignore_index: the target value that marks unlabelled pixels.

    Returns:
        A KxK int64 tensor on `pred`'s device; rows are ground truth, columns prediction.

    Raises:
        ValueError: shapes differ, or a value lies outside [0, K) (other than ignore).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError("pred and target must hold integer class ids")
    valid = target != ignore_index
    t = target[valid].long()
    p = pred[valid].long()
    if t.numel():
        for name, values in (("target", t), ("pred", p)):
            lo, hi = int(values.min()), int(values.max())
            if lo < 0 or hi >= num_classes:
                bad = lo if lo < 0 else hi
                raise ValueError(f"{name} holds class id {bad}, outside [0, {num_classes})")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def summarize(cm: torch.Tensor) -> dict:
    """mIoU, mAcc, aAcc and per-class IoU/accuracy (percent) from a confusion matrix.

    Returns:
        `{"miou", "macc", "aacc": float, "iou", "acc": list[float]}`; per-class values
        are NaN where the class is undefined (see the module docstring). With no
        labelled pixels at all every number is NaN.
    """
    cm = cm.double().cpu()
    tp = cm.diag()
    gt = cm.sum(1)
    pr = cm.sum(0)
    union = gt + pr - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan) * 100
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan) * 100
    total = cm.sum()
    return {
        "miou": _nanmean(iou),
        "macc": _nanmean(acc),
        "aacc": float(tp.sum() / total * 100) if total > 0 else math.nan,
        "iou": iou.tolist(),
        "acc": acc.tolist(),
    }


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~values.isnan()]
    return float(finite.mean()) if finite.numel() else math.nan


class ConfusionMatrix:
    """Streaming accumulator: `update()` per batch, `compute()` at the end.

    The matrix lives on the device of the first update, so evaluation needs no host
    sync until `compute()`; `all_reduce()` sums it across DDP ranks.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.cm: torch.Tensor | None = None

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        batch = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self.cm = batch if self.cm is None else self.cm + batch

    def all_reduce(self, device: torch.device | str = "cpu") -> None:
        """Sum the matrix over DDP ranks (a rank that saw no data contributes zeros)."""
        import torch.distributed as dist

        if self.cm is None:
            self.cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.cm)

    def compute(self) -> dict:
        if self.cm is None:
            return summarize(torch.zeros(self.num_classes, self.num_classes, dtype=torch.long))
        return summarize(self.cm)


class AgreementMatrix(ConfusionMatrix):
    """A confusion matrix that also counts, on labelled pixels, how often the predictions
    agree with a reference prediction (e.g. the clean image's): `compute()["agreement"]`,
    in percent. Counts stay on the device until `compute()`."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        super().__init__(num_classes, ignore_index)
        self.agree: torch.Tensor | int = 0
        self.labelled: torch.Tensor | int = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor, reference: torch.Tensor) -> None:
        super().update(pred, target)
        valid = target != self.ignore_index
        self.agree = self.agree + (pred == reference)[valid].sum()
        self.labelled = self.labelled + valid.sum()

    def compute(self) -> dict:
        result = super().compute()
        labelled = int(self.labelled)
        result["agreement"] = 100.0 * int(self.agree) / labelled if labelled else float("nan")
        return result
