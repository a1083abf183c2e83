"""`segaudit audit model`: a trained model on real, noise, blank and shuffled inputs,
recorded as a run (`phase=audit`). The measurements and red flags are
`segaudit.diagnostics.audit`'s; this module loads the model and writes the record."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from segaudit import runs
from segaudit.core.devices import device_label, resolve_device
from segaudit.diagnostics.audit import audit_findings, given_dataset, measure_conditions
from segaudit.diagnostics.card_probe import probe_card
from segaudit.measure.information import PerImage
from segaudit.measure.prior import analytic_prior
from segaudit.models.checkpoints import TrainedModel, load_for_eval
from segaudit.models.inference import build_inference, inference_record
from segaudit.models.sources import CardAdapter
from segaudit.workflows.recording import record_finished


def measurement_record(
    cfg: DictConfig,
    trained: TrainedModel,
    phase: str,
    command: str,
    by_condition: dict,
    device: torch.device,
    run_id: str | None = None,
    dataset: DictConfig | None = None,
    **fields,
) -> tuple[Path, dict]:
    """A new run directory and a completed record for measurements of a trained model.

    The record carries the model's identity (model, encoder, loss, seed, dataset and the
    strategy of the run it came from), the real-input metrics as its `metrics` and every
    condition's in `metrics_by_condition`; `fields` add the phase's own block.
    """
    saved = trained.saved
    source_record = runs.read_record(trained.ckpt_path.parent) if trained.source_run else {}
    run_cfg = cfg.copy()
    run_cfg.phase = phase
    run_cfg.dataset = saved.dataset if dataset is None else dataset
    run_cfg.seed = saved.seed
    run_cfg.strategy = source_record.get("strategy", saved.strategy)
    run_cfg.run_id = run_id
    return runs.open_run(
        run_cfg,
        command,
        encoder=saved.model.encoder,
        model=(phase == "audit" and cfg.audit.get("model_label")) or saved.choices.model,
        loss=saved.choices.loss,
        train_condition=saved.train_condition.name,
        eval_condition="real",
        status="completed",
        step=trained.step,
        metrics=by_condition["real"],
        metrics_by_condition=by_condition,
        history=[{"step": 0, "condition": name, **m} for name, m in by_condition.items()],
        device=device_label(device),
        finished_at=runs.now(),
        **fields,
    )


def audit(cfg: DictConfig, target: str, command: str = "", on_given_dataset: bool = False) -> dict:
    """`segaudit audit`: evaluate a model on real/noise/blank/shuffled inputs.

    `target` is a run id, a segaudit checkpoint or an external model (`segaudit.models.sources`).
    The val split of the dataset the model was trained on, or with `on_given_dataset`
    the config's dataset (`dataset=...` overrides), whose class count must be the model's;
    an external model is always measured on the config's dataset.

    Pictures of an audit are `segaudit.report.pictures.audit_pictures`' business.

    Returns:
        The audit's run record (`phase=audit`); its `audit` block holds each condition's
        metrics, the analytic prior's mIoU, the content gain (real - prior), the pixel
        agreement between predictions on real and on noise input, the red flags, and for
        an external model that scores near the prior the preprocessing probe's suggestion.
    """
    t0 = time.perf_counter()
    device = resolve_device(str(cfg.device))
    trained = load_for_eval(cfg, target, device)
    dcfg = given_dataset(cfg, trained) if on_given_dataset else trained.saved.dataset
    return audit_trained(cfg, trained, dcfg, device, command, t0)


def audit_trained(
    cfg: DictConfig,
    trained: TrainedModel,
    dcfg: DictConfig,
    device: torch.device,
    command: str = "",
    t0: float | None = None,
) -> dict:
    """The audit of a model already loaded on `device` (`audit`, and `segaudit.audit_model`)."""
    t0 = time.perf_counter() if t0 is None else t0
    infer = build_inference(trained.model, dcfg, cfg.get("inference"))
    results, per_image = measure_conditions(cfg, trained.model, dcfg, device, infer)
    return finish_audit(cfg, trained, dcfg, device, results, inference_record(infer), command, t0, per_image)


def finish_audit(
    cfg: DictConfig,
    trained: TrainedModel,
    dcfg: DictConfig,
    device: torch.device,
    results: dict[str, dict],
    inference: dict,
    command: str,
    t0: float,
    per_image: dict[str, PerImage],
) -> dict:
    """The audit record of measured conditions: prior, content gain, the information
    evidence with its intervals, red flags, the finding against a reported mIoU, and the
    card probe for a card-wrapped model near the prior."""
    found = audit_findings(results, per_image, analytic_prior(dcfg), cfg.gate, cfg.audit.reported_miou)
    block = {
        "source": str(trained.ckpt_path),
        "source_run": trained.source_run,
        "miou": found.miou,
        "prior_miou": found.prior_miou,
        "majority_miou": found.majority_miou,
        "content_gain": found.content_gain,
        "inference": inference,
        "agreement_real_noise": results["noise"]["agreement"],
        "metrics": results,
        "evidence": found.evidence,
        "red_flags": found.red_flags,
        "reported_miou": cfg.audit.reported_miou,
        "finding": found.finding,
        "probe": None,
    }
    miou = found.miou
    near_prior = miou["real"] - block["prior_miou"] <= float(cfg.audit.probe_below_prior_plus)
    if isinstance(trained.model, CardAdapter) and cfg.audit.probe and near_prior:
        block["probe"] = probe_card(cfg, trained.model, dcfg, device, miou["real"])
    folder, record = measurement_record(
        cfg,
        trained,
        "audit",
        command,
        results,
        device,
        None if cfg.run_id is None else str(cfg.run_id),
        dataset=dcfg,
        audit=block,
    )
    return record_finished(cfg, folder, record, time.perf_counter() - t0)
