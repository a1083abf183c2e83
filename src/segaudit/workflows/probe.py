"""`segaudit probe`: the frozen-backbone probe of a trained model, recorded as a run
(`phase=probe`)."""

from __future__ import annotations

import time

from omegaconf import DictConfig

from segaudit import runs
from segaudit.core.devices import resolve_device
from segaudit.diagnostics.audit import given_dataset
from segaudit.diagnostics.probe import check_probe_settings, find_encoder, probe_backbone
from segaudit.models.checkpoints import load_for_eval
from segaudit.workflows.recording import record_finished


def run_probe(cfg: DictConfig, target: str, command: str = "", on_given_dataset: bool = False) -> dict:
    """`segaudit probe RUN|SOURCE`: probe the frozen encoder, a random one and the prior;
    record it (`phase=probe`) and return the record.

    `target` is anything `segaudit audit` takes whose modules are reachable (a run id, a
    segaudit checkpoint, an smp folder, weights with a factory, a torchvision model). The
    dataset is the one the model was trained on, or with `on_given_dataset` (and always
    for an external model) the config's.
    """
    t0 = time.perf_counter()
    settings = cfg.backbone_probe
    check_probe_settings(settings)
    if cfg.run_id is not None:
        runs.check_new_run_id(runs.runs_root(cfg), str(cfg.run_id))
    device = resolve_device(str(cfg.device))
    trained = load_for_eval(cfg, target, device)
    dcfg = given_dataset(cfg, trained) if on_given_dataset else trained.saved.dataset
    found = probe_backbone(find_encoder(trained.model), dcfg, settings, device, int(cfg.seed))
    real, random, prior = found.encoder, found.random, found.prior_miou
    block = {
        "source": str(trained.ckpt_path),
        "source_run": trained.source_run,
        "encoder_miou": real["miou"],
        "random_miou": random["miou"],
        "prior_miou": prior,
        "content_over_random": real["miou"] - random["miou"],
        "iters": int(settings.iters),
        "features": str(settings.features),
        "random_metrics": random,
    }
    run_cfg = cfg.copy()
    run_cfg.phase, run_cfg.dataset = "probe", dcfg
    run_cfg.strategy = trained.saved.get("strategy", "external")
    folder, record = runs.open_run(
        run_cfg,
        command,
        model=trained.saved.choices.model,
        encoder=trained.saved.model.encoder,
        train_condition=trained.saved.train_condition.name,
        eval_condition="real",
        status="completed",
        metrics=real,
        metrics_by_condition={"real": real},
        finished_at=runs.now(),
        probe=block,
    )
    return record_finished(cfg, folder, record, time.perf_counter() - t0)
