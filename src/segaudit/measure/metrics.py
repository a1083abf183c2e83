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
import torch.distributed as dist


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
    counts = pair_counts(pred, target, num_classes, ignore_index)
    if int(counts[-1]):  # one read-back per call (ConfusionMatrix.update defers even this)
        _raise_out_of_range(pred, target, num_classes, ignore_index)
    return counts[:-2].reshape(num_classes, num_classes)


def pair_counts(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(ground truth, prediction) pair counts as a flat K*K+2 int64 vector on the inputs'
    device, without any host sync: entry K*K counts ignore pixels, entry K*K+1 labelled
    pixels whose target or prediction lies outside [0, K) (an error, reported later)."""
    k = num_classes
    t, p = target.reshape(-1).long(), pred.reshape(-1).long()
    in_range = (t >= 0) & (t < k) & (p >= 0) & (p < k)
    index = torch.where(t == ignore_index, k * k, torch.where(in_range, t * k + p, k * k + 1))
    # index_add_ rather than bincount: CUDA's bincount reads max() back to size its output.
    return torch.zeros(k * k + 2, dtype=torch.long, device=index.device).index_add_(0, index, torch.ones_like(index))


def _raise_out_of_range(pred, target, num_classes: int, ignore_index: int) -> None:
    valid = target != ignore_index
    for name, values in (("target", target[valid]), ("pred", pred[valid])):
        bad = values[(values < 0) | (values >= num_classes)]
        if bad.numel():
            raise ValueError(f"{name} holds class id {int(bad[0])}, outside [0, {num_classes})")


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

    The counts live on the device of the first update and `update()` never reads them
    back, so evaluation on a GPU runs without a host sync until `compute()` (which is
    also where class ids outside [0, K) are reported); `all_reduce()` sums across ranks.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts: torch.Tensor | None = None  # flat, see `pair_counts`

    @property
    def cm(self) -> torch.Tensor | None:
        """The K x K matrix so far (rows ground truth, columns prediction)."""
        k = self.num_classes
        return None if self.counts is None else self.counts[: k * k].reshape(k, k)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        batch = pair_counts(pred, target, self.num_classes, self.ignore_index)
        self.counts = batch if self.counts is None else self.counts + batch

    def all_reduce(self, device: torch.device | str = "cpu") -> None:
        """Sum the counts over DDP ranks (a rank that saw no data contributes zeros)."""
        if self.counts is None:
            self.counts = torch.zeros(self.num_classes**2 + 2, dtype=torch.long, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts)

    def compute(self) -> dict:
        """Summary metrics (see `summarize`).

        Raises:
            ValueError: some labelled pixel had a target or prediction outside [0, K).
        """
        if self.counts is None:
            return summarize(torch.zeros(self.num_classes, self.num_classes, dtype=torch.long))
        bad = int(self.counts[-1])
        if bad:
            raise ValueError(
                f"{bad} labelled pixel(s) had a class id outside [0, {self.num_classes}) "
                f"in the target or the prediction"
            )
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
        self.agree = self.agree + ((pred == reference) & valid).sum()  # no boolean indexing: no sync
        self.labelled = self.labelled + valid.sum()

    def compute(self) -> dict:
        result = super().compute()
        labelled = int(self.labelled)
        result["agreement"] = 100.0 * int(self.agree) / labelled if labelled else float("nan")
        return result
