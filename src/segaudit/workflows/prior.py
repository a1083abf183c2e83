"""`segaudit prior`: the analytic prior recorded as a run (`phase=prior`)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from segaudit import runs
from segaudit.data import prepare_dataset
from segaudit.measure.information import PER_IMAGE_FILE, save_per_image
from segaudit.measure.prior import PRIOR_FILE, analytic_prior
from segaudit.workflows.recording import record_finished


def run_prior(cfg: DictConfig, command: str = "") -> dict:
    """`segaudit prior`: compute the prior, record it as a run (`phase=prior`), return the record.

    The class counts are saved beside the record (`prior.pt`); `segaudit.report.pictures`
    draws them."""
    cfg = cfg.copy()
    cfg.phase = "prior"
    cfg.dataset = prepare_dataset(cfg.dataset, cfg.paths.cache)
    result = analytic_prior(cfg.dataset)  # data errors surface before a run directory exists
    folder, record = runs.open_run(
        cfg,
        command,
        model="analytic_prior",
        strategy="analytic_prior",
        train_condition="labels",
        eval_condition="labels",
        status="completed",
        metrics=result.per_pixel,
        history=[{"step": 0, "condition": "labels", **result.per_pixel}],
        prior={
            "size": list(result.size),
            "n_train": result.n_train,
            "n_val": result.n_val,
            "majority_class": result.majority_class,
            "majority_class_name": cfg.dataset.class_names[result.majority_class],
            "majority": result.majority,
            "per_pixel": result.per_pixel,
            "reported": "per-pixel argmax at evaluation resolution, no augmentation",
            "labels_per_s": result.n_train / max(result.seconds, 1e-9),
            "pseudo_count": result.pseudo_count,
            "nll_bits": {name: ref.bits_per_pixel for name, ref in result.reference.items()},
        },
        finished_at=runs.now(),
    )
    torch.save({"counts": result.counts, "class_names": list(cfg.dataset.class_names)}, folder / PRIOR_FILE)
    save_per_image(
        folder / PER_IMAGE_FILE, {f"0/{name}": ref for name, ref in result.reference.items()}, result.val_stems
    )
    return record_finished(cfg, folder, record, result.seconds)
