"""The analytic prior: the best predictor that never looks at the image.

From the training labels alone, count each class at each pixel (at evaluation
resolution, ignore pixels excluded) and predict the per-pixel argmax. Its validation
mIoU is the ceiling of anything input-agnostic: a model trained on noise, or on images
that do not match their labels, can only learn this map. The global-majority baseline
(one class everywhere) is reported beside it.

The reported prior is the one at evaluation resolution, without the train-time random
rescale/crop/flip (which would blur the map toward the mean; the unaugmented map is the
stronger input-agnostic predictor, hence the ceiling).

As probabilities, the prior is the reference of the information evidence
(`segaudit.measure.evidence`): per pixel, the smoothed class frequencies
(count + a * g) / (n + a), with g the global class frequencies and the pseudo-count a
chosen by leave-one-out likelihood on the training labels (no val label is looked at).
Every val image gets its log-likelihood under these frequencies and under g alone.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from segaudit.core.errors import DataError
from segaudit.data import list_samples
from segaudit.data.folder import read_mask
from segaudit.data.labels import label_lut
from segaudit.measure.information import PerImage, label_scores, stack_rows
from segaudit.measure.metrics import confusion_matrix, summarize

PRIOR_FILE = "prior.pt"
PSEUDO_COUNTS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)  # leave-one-out picks one


@dataclass
class PriorResult:
    """The prior's class counts and how it scores on the validation split."""

    counts: torch.Tensor  # K x H x W int64, training label counts at evaluation size
    per_pixel: dict  # metrics of the per-pixel argmax predictor
    majority: dict  # metrics of the global-majority predictor
    majority_class: int
    size: tuple[int, int]
    n_train: int
    n_val: int
    seconds: float
    pseudo_count: float = 1.0  # the smoothing of `location_probabilities`
    reference: dict[str, PerImage] | None = None  # val images under "location" and "global"
    val_stems: list[str] | None = None

    @property
    def frequencies(self) -> torch.Tensor:
        """Per-pixel class frequencies (K x H x W, each pixel sums to 1 where labelled)."""
        return frequencies(self.counts)


def frequencies(counts: torch.Tensor) -> torch.Tensor:
    """K x H x W label counts to per-pixel class frequencies (0 where never labelled)."""
    total = counts.sum(0, keepdim=True).clamp(min=1)
    return counts.double().div(total).float()


def global_frequencies(counts: torch.Tensor) -> np.ndarray:
    """The class frequencies over every training pixel, add-one smoothed so that a class
    never seen in training keeps a small probability (K, sums to 1)."""
    totals = counts.sum((1, 2)).double().numpy()
    return (totals + 1.0) / (totals.sum() + len(totals))


def leave_one_out_log_likelihood(counts: torch.Tensor, glob: np.ndarray, pseudo_count: float) -> float:
    """Log-likelihood (nats) of every training label under the smoothed frequencies of
    the other labels: sum over pixels x and classes k of
    c_k(x) log((c_k(x) - 1 + a g_k) / (n(x) - 1 + a)). Needs the counts only."""
    return _loo_log_likelihood(_count_histograms(counts), glob, pseudo_count)


def _count_histograms(counts: torch.Tensor) -> tuple[list[np.ndarray], np.ndarray]:
    """How many pixels hold each count (index: the count), per class and for all labels.

    The leave-one-out likelihood depends on a pixel only through its counts, so it is a
    sum over these short histograms: at 1024x2048 x 19 classes, a hundred times cheaper
    than over the dense K x H x W counts for every candidate pseudo-count.
    """
    counts = counts.to(torch.int64)
    return [np.bincount(c.reshape(-1).numpy()) for c in counts], np.bincount(counts.sum(0).reshape(-1).numpy())


def _loo_log_likelihood(
    histograms: tuple[list[np.ndarray], np.ndarray], glob: np.ndarray, pseudo_count: float
) -> float:
    per_class, totals = histograms
    with np.errstate(divide="ignore"):
        total = 0.0
        for k, pixels in enumerate(per_class):
            c = np.arange(1, len(pixels), dtype=np.float64)
            total += float((pixels[1:] * c * np.log(c - 1 + pseudo_count * glob[k])).sum())
        n = np.arange(1, len(totals), dtype=np.float64)
        return total - float((totals[1:] * n * np.log(np.maximum(n - 1 + pseudo_count, 1e-12))).sum())


def choose_pseudo_count(counts: torch.Tensor, glob: np.ndarray) -> float:
    """The pseudo-count in `PSEUDO_COUNTS` whose smoothing best predicts each training
    label from the others (leave-one-out likelihood)."""
    histograms = _count_histograms(counts)
    return max(PSEUDO_COUNTS, key=lambda a: _loo_log_likelihood(histograms, glob, a))


def location_log2_probabilities(counts: torch.Tensor, glob: np.ndarray, pseudo_count: float) -> np.ndarray:
    """log2 of the smoothed per-pixel class frequencies (c + a g) / (n + a), K x H x W."""
    c = counts.double()
    g = torch.from_numpy(glob).view(-1, 1, 1)
    probs = (c + pseudo_count * g) / (c.sum(0, keepdim=True) + pseudo_count)
    return probs.log2().float().numpy()


def grid_index(shape: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the `size` grid each pixel of an image of `shape` reads (nearest,
    pixel centres aligned: torch's `nearest-exact`)."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * size[0] / shape[0]).astype(np.int64), size[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * size[1] / shape[1]).astype(np.int64), size[1] - 1)
    return rows, cols


MAX_PRIOR_SIDE = 2048  # Cityscapes stays exact; a 4000x6000 Mapillary frame is counted at 1365x2048
PRIOR_MEMORY = 2 * 1024**3  # bytes of per-thread count arrays; fewer threads beyond it


def eval_size(dcfg: DictConfig, first_mask: Path) -> tuple[int, int]:
    """The grid the prior counts on: the training resize if set, else the first label's
    size with its long side capped at MAX_PRIOR_SIDE (the map is smooth, and each val
    label is scored at its own size anyway)."""
    if dcfg.transform.get("resize") is not None:
        return tuple(int(v) for v in dcfg.transform.resize)
    with Image.open(first_mask) as im:
        height, width = im.height, im.width
    scale = min(1.0, MAX_PRIOR_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _load(path: Path, size: tuple[int, int] | None, lut: np.ndarray | None = None) -> np.ndarray:
    mask = read_mask(path) if lut is None else lut[read_mask(path)]
    return mask if size is None else _resized(mask, size)


def _resized(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label map on the counting grid, as `count_labels` reads it (nearest)."""
    if mask.shape == size:
        return mask
    return np.array(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))


def _check_values(mask: np.ndarray, path: Path, num_classes: int, ignore_index: int) -> None:
    bad = (mask >= num_classes) & (mask != ignore_index)
    if bad.any():
        values = sorted(set(np.unique(mask[bad]).tolist()))
        raise DataError(
            f"{path}: label value(s) {values[:6]} outside [0, {num_classes}) and not "
            f"ignore ({ignore_index}); check the label mapping"
        )


def _add_runs(mask: np.ndarray, lut: np.ndarray, diff: np.ndarray) -> None:
    """Add one label map to a run-length difference array (rows x H x (W + 1)).

    A label map is piecewise constant along each row, so instead of touching every pixel
    we find where the value changes and add +1 at each run's start and -1 at its end;
    a cumulative sum over x (once, after all files) gives the per-pixel counts.
    """
    height, width = mask.shape
    padded = np.zeros(-(-height * width // 8) * 8, dtype=bool)  # whole 64-bit words
    starts = padded[: height * width].reshape(height, width)
    starts[:, 0] = True
    np.not_equal(mask[:, 1:], mask[:, :-1], out=starts[:, 1:])
    # Run starts are sparse: find the non-zero 8-byte words first, then the bytes in them.
    words = np.flatnonzero(padded.view(np.uint64))
    word_rows, byte = np.nonzero(padded.reshape(-1, 8)[words])
    ys, xs = np.divmod(words[word_rows] * 8 + byte, width)  # row-major order
    ends = np.empty_like(xs)
    ends[:-1] = xs[1:]
    ends[np.r_[ys[1:] != ys[:-1], True]] = width  # the last run of each row ends at W
    base = (lut[mask[ys, xs]] * height + ys) * (width + 1)
    flat = diff.reshape(-1)
    flat[base + xs] += 1  # (row, y, x) are distinct within each statement: exact
    flat[base + ends] -= 1


def _count_chunk(
    paths: list[Path], size, num_classes: int, ignore_index: int, label_lut: np.ndarray | None = None
) -> np.ndarray:
    """Run-length difference array over one chunk of label maps.

    Rows: K classes, then ignore, then values outside the classes (a file with any of
    those is named in a DataError).
    """
    height, width = size
    lut = np.full(256, num_classes + 1, dtype=np.int64)  # raw value -> row
    lut[:num_classes] = np.arange(num_classes)
    lut[ignore_index] = num_classes
    if label_lut is not None:  # stored id -> train id -> row, in one table
        lut = lut[label_lut]
    diff = np.zeros((num_classes + 2, height, width + 1), dtype=np.int32)
    for path in paths:
        _add_runs(_load(path, size), lut, diff)
    if diff[num_classes + 1].any():  # rare: find and name the offending file
        for path in paths:
            _check_values(_load(path, size, label_lut), path, num_classes, ignore_index)
    return diff


def _chunks(items: list, n: int) -> list[list]:
    size = max(1, -(-len(items) // n))
    return [items[i : i + size] for i in range(0, len(items), size)]


def count_labels(
    paths: list[Path],
    size: tuple[int, int],
    num_classes: int,
    ignore_index: int,
    workers: int,
    label_lut: np.ndarray | None = None,
) -> torch.Tensor:
    """Per-pixel class counts (K x H x W int64) over label maps, decoded in parallel.

    Label maps stream through `workers` threads (PNG decode releases the GIL); each chunk
    keeps one run-length difference array, so memory stays constant in the number of
    files and the work per file follows its region boundaries, not its pixel count.
    """
    per_thread = (num_classes + 2) * size[0] * (size[1] + 1) * 4  # one int32 difference array
    workers = max(1, min(workers, PRIOR_MEMORY // per_thread))
    chunks = _chunks(paths, workers)  # one difference array per thread
    total = None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        count = partial(
            _count_chunk, size=size, num_classes=num_classes, ignore_index=ignore_index, label_lut=label_lut
        )
        for diff in pool.map(count, chunks):
            total = diff.astype(np.int64) if total is None else total + diff
    counts = np.cumsum(total[:num_classes, :, : size[1]], axis=-1)  # one pass, at the end
    return torch.from_numpy(counts)


def prior_map(counts: torch.Tensor) -> torch.Tensor:
    """Per-pixel argmax of K x H x W label counts; never-labelled pixels get the majority class."""
    majority = int(counts.sum((1, 2)).argmax())
    predicted = counts.argmax(0)
    predicted[counts.sum(0) == 0] = majority
    return predicted


def score_map(predicted: torch.Tensor, counts: torch.Tensor) -> dict:
    """`summarize` of a fixed H x W prediction against every label map behind `counts`.

    The confusion matrix needs no label map: row c, column k is the number of class-c
    pixels over all maps at the pixels where the prediction is k.
    """
    num_classes = counts.shape[0]
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    cm.index_add_(1, predicted.reshape(-1), counts.reshape(num_classes, -1).long())
    return summarize(cm)


@dataclass
class _Reference:
    """What scoring a val label needs: the prior's map and its log2-probabilities."""

    predicted: np.ndarray  # H x W prior map
    location: np.ndarray  # K x H x W log2 smoothed frequencies
    glob: np.ndarray  # K log2 global frequencies
    majority_class: int
    num_classes: int
    ignore_index: int


def _score_chunk(paths, ref: _Reference, label_lut):
    """Confusion matrices of the prior map and the majority class over some val labels,
    and each label's per-image rows (`segaudit.measure.information`) for both as probabilities."""
    cm_prior = torch.zeros(ref.num_classes, ref.num_classes, dtype=torch.int64)
    cm_major = torch.zeros_like(cm_prior)
    rows = []
    for path in paths:
        a, b, row = _score_target(_load(path, None, label_lut), ref)
        cm_prior += a
        cm_major += b
        rows.append(row)
    return cm_prior, cm_major, rows


def _score_target(target: np.ndarray, ref: _Reference) -> tuple[torch.Tensor, torch.Tensor, tuple[dict, dict]]:
    """One val label map (at its own size) under the prior map and the majority class:
    their confusion matrices and per-image rows as probabilities."""
    k, ignore = ref.num_classes, ref.ignore_index
    ys, xs = grid_index(target.shape, ref.predicted.shape)
    pred = ref.predicted[np.ix_(ys, xs)]
    labels_all = torch.from_numpy(target.astype(np.int64))
    cm_prior = confusion_matrix(torch.from_numpy(pred), labels_all, k, ignore)
    major = np.full_like(pred, ref.majority_class)
    cm_major = confusion_matrix(torch.from_numpy(major), labels_all, k, ignore)
    valid = target != ignore
    labels, (py, px) = target[valid].astype(np.int64), np.nonzero(valid)
    location = label_scores(None, pred, target, k, ignore)
    location["nll"] = float(-ref.location[labels, ys[py], xs[px]].astype(np.float64).sum())
    glob = label_scores(None, major, target, k, ignore)
    glob["nll"] = float(-ref.glob[labels].astype(np.float64).sum())
    return cm_prior, cm_major, (location, glob)


def _reference(counts: torch.Tensor, pseudo_count: float, ignore_index: int) -> _Reference:
    glob = global_frequencies(counts)
    return _Reference(
        prior_map(counts).numpy(),
        location_log2_probabilities(counts, glob, pseudo_count),
        np.log2(glob).astype(np.float32),
        int(counts.sum((1, 2)).argmax()),
        counts.shape[0],
        ignore_index,
    )


def _score_labels(
    paths: list[Path], ref: _Reference, lut: np.ndarray | None, workers: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, PerImage]]:
    """The prior map's and the majority class's confusion matrices over the labels at
    `paths` (each at its native size), and their per-image scores as probabilities."""
    cm_prior = torch.zeros(ref.num_classes, ref.num_classes, dtype=torch.int64)
    cm_major = torch.zeros_like(cm_prior)
    rows = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        jobs = [pool.submit(_score_chunk, c, ref, lut) for c in _chunks(paths, workers * 4)]
        for job in jobs:  # in order: rows line up with `paths`
            a, b, chunk_rows = job.result()
            cm_prior += a
            cm_major += b
            rows += chunk_rows
    return (
        cm_prior,
        cm_major,
        {"location": stack_rows([r[0] for r in rows]), "global": stack_rows([r[1] for r in rows])},
    )


def leave_one_out_scores(dcfg: DictConfig, counts: torch.Tensor, pseudo_count: float, masks: list[Path]) -> PerImage:
    """Per-image scores of the prior on training labels that `counts` includes, each label
    scored by the prior of all the others: its own contribution (as `count_labels` made
    it, on the counting grid) is taken out of the counts first.

    A prior scored on the labels it was counted from is optimistic (a few hundred maps
    leave a visible in-sample edge), which would make the training pairs look explained
    by content less than they are.
    """
    lut = label_lut(dcfg)
    ref = _reference(counts, pseudo_count, int(dcfg.ignore_index))
    k, ignore = ref.num_classes, ref.ignore_index
    size = tuple(counts.shape[1:])
    c_all = counts.numpy()  # int64, indexed in place: a float copy is 320 MB at 1024x2048
    n_all = c_all.sum(0)
    smooth = pseudo_count * np.exp2(ref.glob.astype(np.float64))
    rows = []
    for path in masks:
        target = _load(path, None, lut)
        counted = _resized(target, size)
        ys, xs = grid_index(target.shape, size)
        valid = target != ignore
        labels, (py, px) = target[valid].astype(np.int64), np.nonzero(valid)
        cy, cx = ys[py], xs[px]
        own = counted[cy, cx].astype(np.int64)
        c = c_all[labels, cy, cx] - (own == labels)
        n = n_all[cy, cx] - ((own != ignore) & (own < k))
        row = label_scores(None, ref.predicted[np.ix_(ys, xs)], target, k, ignore)
        row["nll"] = float(-np.log2((c + smooth[labels]) / (n + pseudo_count)).sum())
        rows.append(row)
    return stack_rows(rows)


def analytic_prior(dcfg: DictConfig, workers: int | None = None) -> PriorResult:
    """Compute the analytic prior of a prepared dataset config and score it on `val`.

    Raises:
        DataError: unpaired files, undecodable masks, or label values outside the classes.
    """
    t0 = time.perf_counter()
    workers = workers or min(8, os.cpu_count() or 1)
    num_classes, ignore_index = int(dcfg.num_classes), int(dcfg.ignore_index)
    train = [s.mask for s in list_samples(dcfg, "train")]
    val_samples = list_samples(dcfg, "val")
    val = [s.mask for s in val_samples]
    size = eval_size(dcfg, train[0])
    lut = label_lut(dcfg)
    counts = count_labels(train, size, num_classes, ignore_index, workers, lut)
    class_totals = counts.sum((1, 2))
    majority_class = int(class_totals.argmax())
    glob = global_frequencies(counts)
    pseudo_count = choose_pseudo_count(counts, glob)
    ref = _reference(counts, pseudo_count, ignore_index)
    cm_prior, cm_major, reference = _score_labels(val, ref, lut, workers)
    return PriorResult(
        counts=counts,
        per_pixel=summarize(cm_prior),
        majority=summarize(cm_major),
        majority_class=majority_class,
        size=size,
        n_train=len(train),
        n_val=len(val),
        seconds=time.perf_counter() - t0,
        pseudo_count=pseudo_count,
        reference=reference,
        val_stems=[s.stem for s in val_samples],
    )


def count_masks(masks, size: tuple[int, int], num_classes: int, ignore_index: int) -> torch.Tensor:
    """Per-pixel class counts (K x H x W int64) of label maps held in memory, each resized
    to `size` by nearest neighbour as `count_labels` resizes files.

    Raises:
        DataError: a label value outside the classes (other than `ignore_index`).
    """
    counts = torch.zeros(num_classes * size[0] * size[1], dtype=torch.int64)
    pixels = torch.arange(size[0] * size[1])
    for i, mask in enumerate(masks):
        mask = _resized(np.asarray(mask).astype(np.int32), size).astype(np.int64).reshape(-1)
        _check_values(mask, Path(f"training mask {i}"), num_classes, ignore_index)
        keep = mask != ignore_index
        if (mask[keep] < 0).any():
            raise DataError(f"training mask {i}: negative label values; give ignore_index for them")
        counts += torch.bincount(torch.from_numpy(mask[keep]) * pixels.numel() + pixels[keep], minlength=counts.numel())
    return counts.view(num_classes, *size)


def prior_of_masks(counts: torch.Tensor, val_masks: list[np.ndarray], ignore_index: int) -> PriorResult:
    """The analytic prior of training label `counts` (`count_masks`, `count_labels`), scored
    on label maps held in memory: what `analytic_prior` gives for a dataset on disk, for a
    training loop's own data (`segaudit.integrations`)."""
    t0 = time.perf_counter()
    glob = global_frequencies(counts)
    pseudo_count = choose_pseudo_count(counts, glob)
    ref = _reference(counts, pseudo_count, ignore_index)
    cm_prior = torch.zeros(ref.num_classes, ref.num_classes, dtype=torch.int64)
    cm_major = torch.zeros_like(cm_prior)
    rows = []
    for target in val_masks:
        a, b, row = _score_target(np.asarray(target), ref)
        cm_prior += a
        cm_major += b
        rows.append(row)
    return PriorResult(
        counts=counts,
        per_pixel=summarize(cm_prior),
        majority=summarize(cm_major),
        majority_class=ref.majority_class,
        size=tuple(counts.shape[1:]),
        n_train=-1,
        n_val=len(val_masks),
        seconds=time.perf_counter() - t0,
        pseudo_count=pseudo_count,
        reference={"location": stack_rows([r[0] for r in rows]), "global": stack_rows([r[1] for r in rows])},
    )
