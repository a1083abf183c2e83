"""Eval-only audit of a trained model: does it use the image at all?

One pass over the validation split feeds each batch four ways — real images, noise,
a blank image, and another sample's image (a fixed derangement) — and compares the
scores with the analytic prior of the training labels.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from segaudit import runs
from segaudit.checkpoints import TrainedModel, load_for_eval
from segaudit.config import load_group_option
from segaudit.data import build_dataset, eval_loader, prepare_dataset
from segaudit.data.conditions import DeviceImages
from segaudit.devices import amp_dtype, device_label, resolve_device
from segaudit.errors import ConfigError
from segaudit.evaluation import predict_labels
from segaudit.inference import build_inference, inference_record
from segaudit.metrics import AgreementMatrix, ConfusionMatrix
from segaudit.prior import analytic_prior

CONDITIONS = ("real", "noise", "blank", "shuffled")


def measurement_record(cfg: DictConfig, trained: TrainedModel, phase: str, command: str,
                       by_condition: dict, device: torch.device, run_id: str | None = None,
                       dataset: DictConfig | None = None, **fields) -> tuple[Path, dict]:
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
        run_cfg, command, model=saved.choices.model, encoder=saved.model.encoder,
        loss=saved.choices.loss, train_condition=saved.train_condition.name,
        eval_condition="real", status="completed", step=trained.step,
        metrics=by_condition["real"], metrics_by_condition=by_condition,
        history=[{"step": 0, "condition": name, **m} for name, m in by_condition.items()],
        device=device_label(device), finished_at=runs.now(), **fields,
    )


class _RealAndShuffled(Dataset):
    """(real image, deranged image, mask) triples: both conditions in one pass."""

    def __init__(self, real: Dataset, shuffled: Dataset):
        self.real, self.shuffled = real, shuffled

    def __len__(self) -> int:
        return len(self.real)

    def image_sizes(self) -> list[tuple[int, int]]:
        return self.real.image_sizes()  # shuffled images are fitted to each mask's size

    def __getitem__(self, index: int):
        image, mask = self.real[index]
        other, _ = self.shuffled[index]
        return image, other, mask


@torch.inference_mode()
def audit(cfg: DictConfig, target: str, command: str = "", on_given_dataset: bool = False) -> dict:
    """`segaudit audit`: evaluate a checkpoint on real/noise/blank/shuffled inputs.

    The val split of the dataset the model was trained on, or with `on_given_dataset`
    the config's dataset (`dataset=...` overrides), whose class count must be the model's.

    Pictures of an audit are `segaudit.pictures.audit_pictures`' business.

    Returns:
        The audit's run record (`phase=audit`); its `audit` block holds each condition's
        metrics, the analytic prior's mIoU, the content gain (real - prior) and the pixel
        agreement between predictions on real and on noise input.
    """
    t0 = time.perf_counter()
    device = resolve_device(str(cfg.device))
    dtype = amp_dtype(str(cfg.train.amp), device)
    trained = load_for_eval(cfg, target, device)
    model, dcfg = trained.model, trained.saved.dataset
    if on_given_dataset:
        dcfg = prepare_dataset(cfg.dataset, cfg.paths.cache)
        if int(dcfg.num_classes) != int(trained.saved.dataset.num_classes):
            raise ConfigError(f"dataset={dcfg.name} has {dcfg.num_classes} classes, the model predicts "
                              f"{trained.saved.dataset.num_classes} (give a dataset.label_map)")
    num_classes, ignore_index = int(dcfg.num_classes), int(dcfg.ignore_index)
    triples = _RealAndShuffled(
        build_dataset(dcfg, "val", train=False),
        build_dataset(dcfg, "val", train=False, condition=load_group_option("condition", "shuffled")),
    )
    loader = eval_loader(triples, int(cfg.train.eval_batch_size))
    infer = build_inference(model, dcfg, cfg.get("inference"))
    predict = partial(predict_labels, model, device=device, dtype=dtype, infer=infer)
    mean, std = dcfg.transform.mean, dcfg.transform.std
    noise = DeviceImages(load_group_option("condition", "noise"), mean, std, device, seeded=True)
    blank = DeviceImages(load_group_option("condition", "blank"), mean, std, device, seeded=True)
    metrics = {"real": ConfusionMatrix(num_classes, ignore_index),
               "noise": AgreementMatrix(num_classes, ignore_index),  # noise vs real predictions
               "blank": ConfusionMatrix(num_classes, ignore_index),
               "shuffled": ConfusionMatrix(num_classes, ignore_index)}
    for images, others, target_ in loader:
        images, others = images.to(device), others.to(device)
        target_ = target_.to(device)
        real = predict(images)
        metrics["real"].update(real, target_)
        metrics["noise"].update(predict(noise(images)), target_, real)
        metrics["blank"].update(predict(blank(images)), target_)
        metrics["shuffled"].update(predict(others), target_)
    results = {name: m.compute() for name, m in metrics.items()}
    prior = analytic_prior(dcfg)
    block = {
        "source": str(trained.ckpt_path), "source_run": trained.source_run,
        "miou": {name: results[name]["miou"] for name in CONDITIONS},
        "prior_miou": prior.per_pixel["miou"], "majority_miou": prior.majority["miou"],
        "content_gain": results["real"]["miou"] - prior.per_pixel["miou"],
        "inference": inference_record(infer),
        "agreement_real_noise": results["noise"]["agreement"],
        "metrics": results,
    }
    folder, record = measurement_record(
        cfg, trained, "audit", command, results, device,
        None if cfg.run_id is None else str(cfg.run_id), dataset=dcfg, audit=block)
    record["timings"]["total_s"] = time.perf_counter() - t0
    runs.write_record(folder, record)
    return record
