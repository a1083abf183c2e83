"""Split consistency: do the train and val labels describe the same layout? (labels only)

The analytic prior fitted on the training labels is scored on the val labels and compared
with the prior fitted on the val labels themselves (an in-sample fit: the best any
location-only predictor can do on val). On a healthy dataset the two are close for every
class. When one split's masks are flipped, rotated or cropped differently, or use another
id mapping, the train-fitted prior misses the affected classes on val, and their pixel
shares may differ too. Both priors are counted on one grid, so every score here comes
from two count arrays and no label map is read twice.

Thresholds live in `gate.split` (conf/gate).
"""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig

from segaudit.data import list_samples
from segaudit.data.labels import label_lut
from segaudit.measure.prior import count_labels, eval_size, prior_map, score_map

# Candidate explanations, tried on the train-fitted prior map: (name, map transform).
_GEOMETRY = (
    ("flipped upside down", lambda m: m.flip(-2)),
    ("mirrored left-right", lambda m: m.flip(-1)),
    ("rotated 180 degrees", lambda m: m.flip(-2).flip(-1)),
)


def _shares(counts: torch.Tensor) -> list[float]:
    totals = counts.sum((1, 2)).double()
    return (100 * totals / totals.sum().clamp(min=1)).tolist()


def _explanations(
    train_map: torch.Tensor,
    val_counts: torch.Tensor,
    base: float,
    flagged: list[int],
    class_names: list[str],
    gain: float,
) -> list[str]:
    """The simple change of the train-fitted map that closes most of the gap: a flip, or two
    ids swapped (empty when none wins `gain` points)."""
    found = []
    for name, transform in _GEOMETRY:
        miou = score_map(transform(train_map), val_counts)["miou"]
        if miou - base >= gain:
            found.append(
                (
                    miou,
                    f"the train masks look {name} relative to val "
                    f"(the prior so changed scores {miou:.1f} on val, not {base:.1f})",
                )
            )
    for i, a in enumerate(flagged):
        for b in flagged[i + 1 :]:
            swapped = train_map.clone()
            swapped[train_map == a], swapped[train_map == b] = b, a
            miou = score_map(swapped, val_counts)["miou"]
            if miou - base >= gain:
                found.append(
                    (
                        miou,
                        f"ids {a} ({class_names[a]}) and {b} ({class_names[b]}) look "
                        f"swapped between train and val (swapping them scores {miou:.1f}, "
                        f"not {base:.1f})",
                    )
                )
    return [text for _, text in sorted(found, reverse=True)[:1]]  # the best one


def split_consistency(dcfg: DictConfig, split_gate: DictConfig, workers: int | None = None) -> dict:
    """Compare the train and val label layouts of a prepared dataset config.

    Args:
        dcfg: a prepared dataset config (`segaudit.data.prepare_dataset`).
        split_gate: `gate.split`: `iou_gap` (points), `share_ratio`, `min_share` (percent),
            `explain_gain` (mIoU points a flip or an id swap must win to be named).
        workers: label-decoding threads.

    Returns:
        A JSON-safe dict: per-class `train_share`, `val_share`, `train_prior_iou` (the
        train-fitted prior scored on val), `val_prior_iou` (val-fitted, on val); the two
        mIoUs; `flagged` ({class, index, why}); `explanations`; and `consistent`.
    """
    workers = workers or min(8, os.cpu_count() or 1)
    num_classes, ignore_index = int(dcfg.num_classes), int(dcfg.ignore_index)
    names = list(dcfg.class_names)
    train = [s.mask for s in list_samples(dcfg, "train")]
    val = [s.mask for s in list_samples(dcfg, "val")]
    size = eval_size(dcfg, train[0])
    lut = label_lut(dcfg)
    train_counts = count_labels(train, size, num_classes, ignore_index, workers, lut)
    val_counts = count_labels(val, size, num_classes, ignore_index, workers, lut)
    train_map = prior_map(train_counts)
    from_train = score_map(train_map, val_counts)
    from_val = score_map(prior_map(val_counts), val_counts)
    train_share, val_share = _shares(train_counts), _shares(val_counts)
    flagged = []
    for k in range(num_classes):
        why = _class_problem(
            k, names[k], train_share[k], val_share[k], from_train["iou"][k], from_val["iou"][k], split_gate
        )
        if why:
            flagged.append({"class": names[k], "index": k, "why": why})
    explanations = (
        _explanations(
            train_map,
            val_counts,
            from_train["miou"],
            [f["index"] for f in flagged],
            names,
            float(split_gate.explain_gain),
        )
        if flagged
        else []
    )
    return {
        "size": list(size),
        "class_names": names,
        "train_share": train_share,
        "val_share": val_share,
        "train_prior_iou": from_train["iou"],
        "val_prior_iou": from_val["iou"],
        "train_prior_miou": from_train["miou"],
        "val_prior_miou": from_val["miou"],
        "flagged": flagged,
        "explanations": explanations,
        "consistent": not flagged,
    }


def _class_problem(
    k: int, name: str, train_share: float, val_share: float, train_iou: float, val_iou: float, split_gate: DictConfig
) -> str | None:
    """Why class k's placement or frequency differs grossly between the splits, or None."""
    min_share = float(split_gate.min_share)
    if max(train_share, val_share) < min_share:
        return None  # too rare for either number to mean much
    low, high = sorted((train_share, val_share))
    if low == 0 or high / low >= float(split_gate.share_ratio):
        return f"{name} is {train_share:.1f}% of train pixels but {val_share:.1f}% of val pixels (frequency differs)"
    if val_iou == val_iou and (train_iou != train_iou or val_iou - train_iou >= float(split_gate.iou_gap)):
        train_text = "undefined" if train_iou != train_iou else f"{train_iou:.1f}"
        return (
            f"{name}: the train-fitted prior scores IoU {train_text} on val, the val-fitted "
            f"one {val_iou:.1f} (placement differs)"
        )
    return None


def consistency_lines(result: dict) -> list[str]:
    """Plain lines for the terminal panels (data check, diagnose)."""
    head = (
        f"split consistency: the train-fitted prior scores {result['train_prior_miou']:.1f} on val, "
        f"the val-fitted one {result['val_prior_miou']:.1f}"
    )
    if result["consistent"]:
        return [f"{head}: train and val labels agree"]
    return [
        head + ": train and val labels disagree",
        *[f"  - {f['why']}" for f in result["flagged"]],
        *[f"  likely: {text}" for text in result["explanations"]],
    ]
