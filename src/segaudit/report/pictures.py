"""Pictures that need a model or a saved run: load, predict, then draw with
`report.figures` (which draws arrays and records and imports nothing of segaudit).
Measurements draw nothing; the commands and the diagnose workflow call this after
measuring.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from segaudit import runs
from segaudit.core.config import load_yaml
from segaudit.core.devices import amp_dtype, resolve_device
from segaudit.data import build_dataset, list_samples, prepare_dataset
from segaudit.diagnostics.suspects import read_pairs
from segaudit.measure.evaluation import predict_labels
from segaudit.measure.prior import PRIOR_FILE, frequencies
from segaudit.models.checkpoints import load_checkpoint, load_for_eval, load_trained_model
from segaudit.models.inference import build_inference
from segaudit.report.figures import (
    class_bars,
    evidence_bars,
    evidence_curve,
    learning_curves,
    miou_by_condition,
    prior_heatmaps,
    prior_overview,
)
from segaudit.train.samples import sample_grid, shown_image, write_sample_grid


def _keep(cfg: DictConfig, record: runs.RunRecord, written: list[Path]) -> list[str]:
    """Add the written paths to the run's record (replaced atomically) and return them."""
    paths = [str(p) for p in written]
    record["plots"] = record.get("plots", []) + paths
    runs.write_record(runs.runs_root(cfg) / record["run_id"], record)
    return paths


def audit_pictures(cfg: DictConfig, record: runs.RunRecord, out_dir: Path) -> list[str]:
    """An audit's sample grid (image / truth / prediction on real / on noise, with the
    audit's inference mode) and its mIoU-by-input bars with the prior line."""
    device = resolve_device(str(cfg.device))
    trained = load_for_eval(cfg, record["audit"]["source"], device)  # external sources too
    model, saved = trained.model, trained.saved
    infer = build_inference(model, saved.dataset, cfg.get("inference"))
    grid = write_sample_grid(
        model,
        saved.dataset,
        device,
        amp_dtype(str(cfg.train.amp), device),
        Path(out_dir) / f"samples_{record['run_id']}.png",
        f"{record['model']}/{record['encoder']} ({record['run_id']})",
        infer,
    )
    return _keep(cfg, record, [grid, *miou_by_condition([record], Path(out_dir))])


def prior_pictures(cfg: DictConfig, record: runs.RunRecord, out_dir: Path) -> list[str]:
    """One heatmap per class (and an overview) from the counts a prior run saved."""
    saved = torch.load(runs.runs_root(cfg) / record["run_id"] / PRIOR_FILE, weights_only=True)
    written = prior_heatmaps(frequencies(saved["counts"]), list(saved["class_names"]), Path(out_dir))
    return _keep(cfg, record, written)


def diagnose_pictures(
    runs_root: Path, record: runs.RunRecord, out_dir: Path, device: torch.device, dtype: torch.dtype | None = None
) -> list[Path]:
    """A diagnose's evidence bars, its learning curve with intervals, and the sample grid
    of its baseline model (when the baseline's checkpoint is still there)."""
    written = evidence_bars(record, out_dir) + evidence_curve(record, out_dir)
    baseline = (record.get("steps") or {}).get("baseline")
    ckpt_path = Path(runs_root).expanduser() / str(baseline) / runs.CHECKPOINT
    if baseline and ckpt_path.is_file():
        model, saved = load_trained_model(load_checkpoint(ckpt_path), ckpt_path)
        written.append(
            write_sample_grid(
                model.to(device).eval(),
                saved.dataset,
                device,
                dtype,
                Path(out_dir) / f"samples_{baseline}.png",
                f"diagnose {record['run_id']}: baseline",
            )
        )
    return written


def diagnose_figures(cfg: DictConfig, record: runs.RunRecord, out_dir: Path) -> list[Path]:
    """A diagnose's pictures, written to `out_dir` and nowhere else: the evidence bars, the
    baseline's sample grid, its per-class bars, the top suspect pairs (when any is
    flagged) and the learning curves of the steps."""
    out_dir = Path(out_dir)
    runs_root = runs.runs_root(cfg)
    device = resolve_device(str(cfg.device))
    step_records = [
        runs.read_record(runs_root / run_id)
        for run_id in record["steps"].values()
        if (runs_root / run_id / runs.RECORD).is_file()
    ]
    written = diagnose_pictures(runs_root, record, out_dir, device, amp_dtype(str(cfg.train.amp), device))
    if record.get("classes"):
        frame = pd.DataFrame(record["classes"]["rows"])
        written.append(class_bars(frame, out_dir / f"classes_{record['run_id']}.png", record["run_id"]))
    found = record["steps"].get("suspects")
    if found and (runs_root / found / runs.RECORD).is_file():
        written += suspect_grid(cfg, runs.read_record(runs_root / found), read_pairs(runs_root, found), out_dir)
    return [*written, *learning_curves(step_records, out_dir)]


def prior_overview_figure(cfg: DictConfig, prior_id: str, out_dir: Path) -> list[Path]:
    """The one-picture overview of a prior run's per-class heatmaps (none if its counts are gone)."""
    saved_path = runs.runs_root(cfg) / prior_id / PRIOR_FILE
    if not saved_path.is_file():
        return []
    saved = torch.load(saved_path, weights_only=True)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return [prior_overview(frequencies(saved["counts"]), list(saved["class_names"]), Path(out_dir) / "prior_all.png")]


def diagnose_plots(cfg: DictConfig, record: runs.RunRecord, prior_record: runs.RunRecord, out_dir: Path) -> list[str]:
    """Everything `diagnose --plots` draws: the prior's heatmaps and `diagnose_figures`,
    listed in the records."""
    heatmaps = prior_pictures(cfg, prior_record, out_dir)
    return _keep(cfg, record, [*heatmaps, *diagnose_figures(cfg, record, out_dir)])


def report_plots(runs_root: Path, records: list[runs.RunRecord], out_dir: Path, device: str = "cpu") -> list[Path]:
    """Every picture `segaudit report plots` can draw for these runs.

    Learning curves; mIoU by input condition; for each diagnose, its evidence bars and a
    sample grid of its baseline model; for each prior run, the per-class heatmaps
    (from the counts the prior run saved).
    """
    runs_root = Path(runs_root).expanduser()
    out_dir = Path(out_dir)
    written = learning_curves(records, out_dir) + miou_by_condition(records, out_dir)
    torch_device = resolve_device(device)
    for record in records:
        if record.get("verdict") and record.get("evidence"):
            written += diagnose_pictures(runs_root, record, out_dir, torch_device)
        saved_prior = runs_root / record["run_id"] / PRIOR_FILE
        if record.get("phase") == "prior" and saved_prior.is_file():
            prior = torch.load(saved_prior, weights_only=True)
            written += prior_heatmaps(
                frequencies(prior["counts"]), list(prior["class_names"]), out_dir / f"prior_{record['run_id']}"
            )
    return written


SUSPECT_GRID_COLUMNS = [
    ("image", "image"),
    ("mask", "its mask"),
    ("pred_real", "prediction on the image"),
    ("match_image", "image the mask fits best"),
]


@torch.inference_mode()
def suspect_pictures(
    cfg: DictConfig, record: runs.RunRecord, pairs: list[dict], out_dir: Path, top: int = 8
) -> list[str]:
    """`suspect_grid`, listed in the suspects run's record."""
    return _keep(cfg, record, suspect_grid(cfg, record, pairs, out_dir, top))


def suspect_grid(cfg: DictConfig, record: runs.RunRecord, pairs: list[dict], out_dir: Path, top: int = 8) -> list[Path]:
    """A grid of the top flagged pairs of a suspects run (none when no pair is flagged):
    the image, its mask, the prediction on the image by the fold model that never
    trained on it, and the image the mask fits best when one stands out."""
    flagged = [p for p in pairs if p["flagged"]][: min(top, 8)]
    if not flagged:
        return []
    root = runs.runs_root(cfg)
    saved = load_yaml(root / record["run_id"] / runs.CONFIG)
    dcfg = prepare_dataset(saved.dataset, cfg.paths.cache)
    device = resolve_device(str(cfg.device))
    dtype = amp_dtype(str(cfg.train.amp), device)
    data = {split: build_dataset(dcfg, split, train=False) for split in ("train", "val")}
    where = {s.stem: (split, i) for split in ("train", "val") for i, s in enumerate(list_samples(dcfg, split))}
    models: dict[int, torch.nn.Module] = {}
    mean, std = dcfg.transform.mean, dcfg.transform.std
    samples = []
    for pair in flagged:
        fold = int(pair.get("fold") or 0)
        if fold not in models:
            models[fold] = load_for_eval(cfg, runs.check_run_id(str(record["steps"]["folds"][fold])), device).model
        image, mask = data[pair["split"]][where[pair["stem"]][1]]
        pred = predict_labels(models[fold], image[None].to(device), device, dtype, mask.shape[-2:])[0]
        match = np.zeros((*mask.shape[-2:], 3), np.uint8)
        if pair.get("best_match") in where:
            split, index = where[pair["best_match"]]
            match = shown_image(data[split][index][0], mean, std)
        samples.append(
            {
                "image": shown_image(image, mean, std),
                "mask": mask.numpy(),
                "pred_real": pred.cpu().numpy(),
                "match_image": match,
                "label": f"{pair['split']}/{pair['stem']}\nscore {pair['score']:.0f}"
                + (f", fits {pair['best_match']}" if pair.get("best_match") else ""),
            }
        )
    path = sample_grid(
        samples,
        list(dcfg.class_names),
        int(dcfg.ignore_index),
        Path(out_dir) / f"suspects_{record['run_id']}.png",
        f"top suspect pairs ({record['run_id']})",
        colors=dcfg.get("class_colors"),
        columns=SUSPECT_GRID_COLUMNS,
    )
    return [path]
