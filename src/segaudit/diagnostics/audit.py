"""Eval-only audit of a trained model: does it use the image at all?

One pass over the validation split feeds each batch four ways — real images, noise,
a blank image, and another sample's image (a fixed derangement) — and compares the
scores with the analytic prior of the training labels. Every image is scored on its own
(`segaudit.measure.information`), so each number comes with a bootstrap interval over the val
images and the red flags rest on the information evidence (`segaudit.measure.evidence`).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from segaudit import runs
from segaudit.core.config import load_group_option
from segaudit.core.devices import amp_dtype, device_label, resolve_device
from segaudit.core.errors import ConfigError
from segaudit.core.outcome import Outcome, flagged_if
from segaudit.data import build_dataset, eval_loader, prepare_dataset
from segaudit.data.conditions import DeviceImages
from segaudit.diagnostics.card_probe import probe_card
from segaudit.measure.evaluation import batch_indices, predict_logits
from segaudit.measure.evidence import Bootstrap, Estimate, audit_evidence
from segaudit.measure.information import ImageScores, PerImage
from segaudit.measure.metrics import AgreementMatrix, ConfusionMatrix
from segaudit.measure.prior import analytic_prior
from segaudit.models.checkpoints import TrainedModel, load_for_eval
from segaudit.models.inference import Inference, build_inference, inference_record
from segaudit.models.sources import CardAdapter
from segaudit.runs.trackers import publish

CONDITIONS = ("real", "noise", "blank", "shuffled")


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


class RealAndShuffled(Dataset):
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


def given_dataset(cfg: DictConfig, trained: TrainedModel) -> DictConfig:
    dcfg = prepare_dataset(cfg.dataset, cfg.paths.cache)
    if int(dcfg.num_classes) != int(trained.saved.dataset.num_classes):
        raise ConfigError(
            f"dataset={dcfg.name} has {dcfg.num_classes} classes, the model predicts "
            f"{trained.saved.dataset.num_classes} (give a dataset.label_map)"
        )
    return dcfg


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
    prior = analytic_prior(dcfg)
    miou = {name: results[name]["miou"] for name in CONDITIONS}
    rules = cfg.gate.evidence
    found = audit_evidence(
        per_image,
        prior.reference["location"],
        prior.reference["global"],
        Bootstrap(len(per_image["real"]), int(rules.draws), float(rules.confidence)),
    )
    literal = cfg.gate.get("rule", "evidence") == "miou"
    flags = (
        red_flags(miou, prior.per_pixel["miou"], cfg.gate)
        if literal
        else evidence_flags(found, miou, prior.per_pixel["miou"], cfg.gate)
    )
    block = {
        "source": str(trained.ckpt_path),
        "source_run": trained.source_run,
        "miou": miou,
        "prior_miou": prior.per_pixel["miou"],
        "majority_miou": prior.majority["miou"],
        "content_gain": miou["real"] - prior.per_pixel["miou"],
        "inference": inference,
        "agreement_real_noise": results["noise"]["agreement"],
        "metrics": results,
        "evidence": found,
        "red_flags": flags,
        "reported_miou": cfg.audit.reported_miou,
        "finding": reported_finding(
            miou["real"],
            prior.per_pixel["miou"],
            cfg.audit.reported_miou,
            float(cfg.gate.fault_margin),
            None if literal else _at_prior(found),
        ),
        "probe": None,
    }
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
    record["timings"]["total_s"] = time.perf_counter() - t0
    runs.write_record(folder, record)
    publish(cfg, folder, record)
    return record


@torch.inference_mode()
def measure_conditions(
    cfg: DictConfig, model: torch.nn.Module, dcfg: DictConfig, device: torch.device, infer: Inference
) -> tuple[dict[str, dict], dict[str, PerImage]]:
    """Metrics of `model` on each audit condition, in one pass over the val split: real,
    noise (with its agreement with the real predictions), blank and shuffled, each image
    seen the way `infer` says; and every image's scores under each condition."""
    dtype = amp_dtype(str(cfg.train.amp), device)
    num_classes, ignore_index = int(dcfg.num_classes), int(dcfg.ignore_index)
    triples = RealAndShuffled(
        build_dataset(dcfg, "val", train=False),
        build_dataset(dcfg, "val", train=False, condition=load_group_option("condition", "shuffled")),
    )
    loader = eval_loader(triples, int(cfg.train.eval_batch_size))
    predict = partial(predict_logits, model, device=device, dtype=dtype, infer=infer)
    mean, std = dcfg.transform.mean, dcfg.transform.std
    noise = DeviceImages(load_group_option("condition", "noise"), mean, std, device, seeded=True)
    blank = DeviceImages(load_group_option("condition", "blank"), mean, std, device, seeded=True)
    metrics = {
        "real": ConfusionMatrix(num_classes, ignore_index),
        "noise": AgreementMatrix(num_classes, ignore_index),  # noise vs real predictions
        "blank": ConfusionMatrix(num_classes, ignore_index),
        "shuffled": ConfusionMatrix(num_classes, ignore_index),
    }
    scores = {name: ImageScores(num_classes, ignore_index, len(triples)) for name in metrics}
    real_labels = None
    for indices, (images, others, target) in zip(batch_indices(loader), loader):
        images, others, target = images.to(device), others.to(device), target.to(device)
        for name, inputs in (
            ("real", images),
            ("noise", noise(images)),
            ("blank", blank(images)),
            ("shuffled", others),
        ):
            logits = predict(inputs, size=target.shape[-2:])
            labels = logits.argmax(1)
            if name == "real":
                real_labels = labels
                metrics[name].update(labels, target)
            elif name == "noise":  # noise vs the real predictions
                metrics[name].update(labels, target, real_labels)
            else:
                metrics[name].update(labels, target)
            scores[name].update(indices, logits, target, labels)
    return ({name: m.compute() for name, m in metrics.items()}, {name: s.compute() for name, s in scores.items()})


# --------------------------------------------------------------------------- verdict
def red_flags(miou: dict[str, float], prior: float, gate: DictConfig) -> list[str]:
    """The investigation's alarms for one model (`gate.red_flags`): it keeps most of its
    score on noise input, or it scores no better than the prior or than mismatched images."""
    flags = []
    rules = gate.red_flags
    real = miou["real"]
    if rules.noise_ratio is not None and miou["noise"] > float(rules.noise_ratio) * real:
        flags.append(
            f"noise input scores {miou['noise']:.1f}, more than {rules.noise_ratio:g} x its "
            f"real-image {real:.1f}: it predicts where classes usually are, not what it sees"
        )
    for reference, name, margin in (
        (prior, "analytic prior", rules.prior_margin),
        (miou["shuffled"], "score on another image's pixels", rules.shuffled_margin),
    ):
        if margin is not None and real - reference <= float(margin):
            flags.append(
                f"real-image mIoU {real:.1f} is no better than its {name} {reference:.1f} "
                f"(margin {float(margin):g}): it does not use the image's content"
            )
    return flags


def _at_prior(found: dict) -> bool:
    """The model's real-image predictions are not significantly better than the prior's."""
    key = found["information"]["content"] if found["bits"] else found["miou_gain"]
    return not Estimate.from_dict(key).above_zero


def evidence_flags(found: dict, miou: dict[str, float], prior: float, gate: DictConfig) -> list[str]:
    """The red flags on the information evidence (`segaudit.measure.evidence.audit_evidence`),
    each decided by an interval: the model's real-image predictions explain no more than
    the prior, or no more than its predictions on another image's pixels, or it keeps more
    than `gate.evidence.location_share` of what it explains when fed noise. Without
    probabilities (predictions-only audits) the same questions are asked of mIoU."""
    flags = []
    if found["bits"]:
        content = Estimate.from_dict(found["information"]["content"])
        if _at_prior(found):
            flags.append(
                f"real-image predictions explain no more than the analytic prior: content "
                f"{content.text(3)} bits/pixel (mIoU {miou['real']:.1f} vs prior {prior:.1f}): "
                f"it does not use the image's content"
            )
        versus = Estimate.from_dict(found["versus"]["shuffled"]["bits"])
        if not versus.above_zero:
            flags.append(
                f"its own image helps no more than another image's pixels: {versus.text(3)} "
                f"bits/pixel (mIoU {miou['real']:.1f} vs {miou['shuffled']:.1f} on another image)"
            )
        kept = Estimate.from_dict(found["noise_retained"])
        share = float(gate.evidence.location_share)
        if kept.low > share:
            flags.append(
                f"on noise input it keeps {kept.value:.0%} [{kept.low:.0%}, {kept.high:.0%}] of what "
                f"it explains on real images (> {share:.0%}): it predicts where classes usually "
                f"are, not what it sees"
            )
        return flags
    gain = Estimate.from_dict(found["miou_gain"])
    if _at_prior(found):
        flags.append(
            f"real-image mIoU {miou['real']:.1f} is not above the analytic prior {prior:.1f} "
            f"({gain.text(1)} points): it does not use the image's content"
        )
    versus = Estimate.from_dict(found["versus"]["shuffled"]["miou"])
    if not versus.above_zero:
        flags.append(
            f"real-image mIoU {miou['real']:.1f} is not above its score on another image's "
            f"pixels {miou['shuffled']:.1f} ({versus.text(1)} points)"
        )
    ratio = gate.red_flags.noise_ratio
    if ratio is not None and miou["noise"] > float(ratio) * miou["real"]:
        flags.append(
            f"noise input scores {miou['noise']:.1f}, more than {ratio:g} x its real-image "
            f"{miou['real']:.1f}: it predicts where classes usually are, not what it sees"
        )
    return flags


def reported_finding(
    real: float, prior: float, reported: float | None, margin: float, at_prior: bool | None = None
) -> str | None:
    """Which side to look at, given the mIoU the user's own pipeline reported. `at_prior`:
    whether the model is at the prior (default: its mIoU within `margin` of the prior's;
    an audit passes what the information evidence says)."""
    if reported is None:
        return None
    reported = float(reported)
    if real - prior <= margin if at_prior is None else at_prior:
        return (
            f"your pipeline reported {reported:.1f}; it scores {real:.1f} here, at the prior "
            f"{prior:.1f} too, so the model never learned content: look at training"
        )
    if real - reported > margin:
        return (
            f"your pipeline reported {reported:.1f}; on the same val set this model scores "
            f"{real:.1f}, so your evaluation loses {real - reported:.0f} points: look at evaluation"
        )
    if reported - real > margin:
        return (
            f"your pipeline reported {reported:.1f}, {reported - real:.0f} points over the "
            f"{real:.1f} it scores here: check the model card (preprocessing, class ids) and "
            f"that your evaluation used this val set"
        )
    return (
        f"your pipeline reported {reported:.1f}; it scores {real:.1f} here: the two agree, so the score is the model's"
    )


def audit_outcome(record: dict) -> Outcome:
    """An audit is `FLAGGED` when one of its red flags fired."""
    return flagged_if(record["audit"]["red_flags"])
