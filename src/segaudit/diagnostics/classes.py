"""Per-class evidence: which classes a model reads from the image, which from location alone.

For each class: its pixel share in train and val, the analytic prior's IoU (location
only), the model's IoU on real images and on noise input, and the content gain (real -
prior). A class whose real IoU stays within `gate.classes.location_margin` points of its
prior IoU (where the prior gets it at all) is flagged "location only": the model adds
nothing to where the class usually sits. This is the investigation's label-dominance
analysis, for any trained, audited or diagnosed run.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from segaudit import runs
from segaudit.core.config import load_yaml
from segaudit.core.errors import ConfigError
from segaudit.data import prepare_dataset
from segaudit.measure.consistency import split_consistency
from segaudit.measure.prior import analytic_prior

CLASS_COLUMNS = [
    "class",
    "train_share",
    "val_share",
    "prior_iou",
    "real_iou",
    "noise_iou",
    "content_gain",
    "location_only",
]


def class_rows(
    class_names: list[str],
    train_share: list[float],
    val_share: list[float],
    prior_iou: list,
    real_iou: list,
    noise_iou: list | None,
    rules: DictConfig,
) -> pd.DataFrame:
    """The class table from its columns (percent; None/NaN where undefined).

    Args:
        rules: `gate.classes`: `location_margin` (points) and `min_prior_iou` (a class the
            prior scores below this is not called location-only: nothing places it).
    """
    frame = pd.DataFrame(
        {
            "class": class_names,
            "train_share": train_share,
            "val_share": val_share,
            "prior_iou": pd.to_numeric(pd.Series(prior_iou, dtype="float64")),
            "real_iou": pd.to_numeric(pd.Series(real_iou, dtype="float64")),
            "noise_iou": pd.Series(noise_iou if noise_iou is not None else [None] * len(class_names), dtype="float64"),
        }
    )
    frame["content_gain"] = frame.real_iou - frame.prior_iou
    frame["location_only"] = (frame.content_gain < float(rules.location_margin)) & (
        frame.prior_iou >= float(rules.min_prior_iou)
    )
    return frame[CLASS_COLUMNS]


def content_line(frame: pd.DataFrame, rules: DictConfig, top: int = 4) -> str:
    """One line for the diagnose panel: where the content comes from, and which classes
    the model gets from location alone."""
    learned = frame[frame.content_gain >= float(rules.location_margin)].sort_values("content_gain", ascending=False)
    parts = []
    if len(learned):
        shown = ", ".join(f"{r['class']} {r.content_gain:+.0f}" for _, r in learned.head(top).iterrows())
        more = f" (+{len(learned) - top} more)" if len(learned) > top else ""
        parts.append(f"content comes from {shown}{more}")
    else:
        parts.append("no class gains content over its prior IoU")
    location = frame[frame.location_only]["class"].tolist()
    if location:
        parts.append(f"{', '.join(location)}: location only")
    return "; ".join(parts)


def _model_metrics(record: runs.RunRecord) -> tuple[list, list | None]:
    """Per-class IoU on real images and on noise input (None when noise was not evaluated)."""
    if not record.get("metrics"):
        raise ConfigError(f"{record['run_id']}: run has no final evaluation (status {record['status']})")
    noise = record.get("metrics_by_condition", {}).get("noise")
    return record["metrics"]["iou"], noise["iou"] if noise else None


def _model_run(root: Path, run_id: str) -> runs.RunRecord:
    """The record holding the model's scores: the run itself, or a diagnose's baseline."""
    record = runs.read_record(root / runs.check_run_id(run_id))
    if record["phase"] == "gate":
        baseline = record.get("steps", {}).get("baseline")
        if not baseline:
            raise ConfigError(f"{run_id}: diagnose has no baseline step")
        return runs.read_record(root / baseline)
    if record["phase"] == "prior":
        raise ConfigError(f"{run_id}: a prior run has no model; give a train, audit or diagnose id")
    return record


def class_table(cfg: DictConfig, run_id: str) -> pd.DataFrame:
    """`segaudit report classes RUN`: the class table of a train, audit or diagnose run.

    The model's per-class IoU comes from its record; the pixel shares and the prior from
    the labels of the dataset it was evaluated on (seconds).

    Raises:
        ConfigError: unknown run, or a run without a model evaluation.
    """
    root = runs.runs_root(cfg)
    gate_record = runs.read_record(root / runs.check_run_id(run_id))
    if gate_record["phase"] == "gate" and gate_record.get("classes"):
        return pd.DataFrame(gate_record["classes"]["rows"])[CLASS_COLUMNS]
    record = _model_run(root, run_id)
    real, noise = _model_metrics(record)
    saved = load_yaml(root / record["run_id"] / runs.CONFIG)
    dcfg = prepare_dataset(saved.dataset, cfg.paths.cache)  # an audit saves the dataset it measured
    shares = split_consistency(dcfg, cfg.gate.split)
    prior = analytic_prior(dcfg)
    return class_rows(
        list(dcfg.class_names),
        shares["train_share"],
        shares["val_share"],
        prior.per_pixel["iou"],
        real,
        noise,
        cfg.gate.classes,
    )
