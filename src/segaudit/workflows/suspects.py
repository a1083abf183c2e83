"""`segaudit suspects`: cross-fitted pair scores recorded as a run (`phase=suspects`),
the pairs kept beside the record in `suspects.json`."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from omegaconf import DictConfig

from segaudit import runs
from segaudit.core.config import check_targets, load_yaml
from segaudit.data import prepare_dataset
from segaudit.data.check import preflight
from segaudit.diagnostics.suspects import (
    SUSPECTS_FILE,
    check_suspects_settings,
    cross_fit,
    fold_iters,
    read_pairs,
    summarize_pairs,
)
from segaudit.workflows.recording import record_finished


def find_suspects(cfg: DictConfig, command: str = "") -> dict:
    """`segaudit suspects`: cross-fit, score and flag every pair; record it (`phase=suspects`).

    The pair scores are kept beside the record in `suspects.json`; the record holds the
    summary. A bad setting or a data error is refused before anything is written.
    """
    t0 = time.perf_counter()
    cfg = cfg.copy()
    check_suspects_settings(cfg)
    if cfg.run_id is not None:
        runs.check_new_run_id(runs.runs_root(cfg), str(cfg.run_id))
    cfg.dataset = prepare_dataset(cfg.dataset, cfg.paths.cache)
    if cfg.data_check.before_train:
        preflight(cfg.dataset, skip_bad=bool(cfg.data_check.skip_bad))
    run_id, cfg.run_id = cfg.run_id, None
    scores, fold_runs = cross_fit(cfg, command)
    summary = summarize_pairs(scores)
    rcfg = cfg.copy()
    rcfg.phase, rcfg.strategy, rcfg.run_id = "suspects", "suspects", run_id
    folder, record = runs.open_run(
        rcfg,
        command,
        model=cfg.choices.model,
        encoder=cfg.model.encoder,
        status="completed",
        finished_at=runs.now(),
        steps=fold_runs,
        suspects={
            **summary,
            "folds": int(cfg.suspects.folds),
            "flag_below": float(cfg.suspects.flag_below),
            "iters": fold_iters(cfg),
            "file": SUSPECTS_FILE,
        },
    )
    pairs = [asdict(s) for s in sorted(scores, key=lambda s: (not s.flagged, s.score))]
    text = json.dumps(runs.json_safe(pairs), indent=0, allow_nan=False)
    runs.atomic_write(folder / SUSPECTS_FILE, lambda fh: fh.write(text))
    return record_finished(cfg, folder, record, time.perf_counter() - t0)


def diagnose_config(cfg: DictConfig, diagnose_id: str) -> DictConfig:
    """The config a diagnose ran with (its dataset, model, training), to cross-fit it later."""
    root = runs.runs_root(cfg)
    runs.read_gate_record(root, diagnose_id)
    path = root / diagnose_id / runs.CONFIG
    saved = load_yaml(path)
    check_targets(saved, str(path))  # a run folder is a file anyone could edit
    out = cfg.copy()
    for key in ("dataset", "model", "loss", "optim", "train", "seed", "choices", "inference"):
        if key in saved:
            out[key] = saved[key]
    out.run_id, out.diagnose_id = None, diagnose_id
    return out


def suspects(cfg: DictConfig, diagnose_id: str | None = None, command: str = "") -> tuple[dict, list[dict]]:
    """`segaudit suspects`: the suspects record and its pair scores.

    With `diagnose_id`, the diagnose's own pair scoring when it ran one, else a new
    cross-fit with the dataset, model and training that diagnose used.
    """
    root = runs.runs_root(cfg)
    if diagnose_id is not None:
        done = runs.read_gate_record(root, diagnose_id).get("steps", {}).get("suspects")
        if done:
            return runs.read_record(root / runs.check_run_id(done)), read_pairs(root, done)
        cfg = diagnose_config(cfg, diagnose_id)
    record = find_suspects(cfg, command)
    return record, read_pairs(root, record["run_id"])
