"""Eval-only audit of a trained model: does it use the image at all?

One pass over the validation split feeds each batch four ways — real images, noise,
a blank image (one constant image, predicted once per size), and another sample's image
(a fixed derangement) — and compares the scores with the analytic prior of the training
labels. Every image is scored on its own (`segaudit.measure.information`), so each number
comes with a bootstrap interval over the val images and the red flags rest on the
information evidence (`segaudit.measure.evidence`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from segaudit.core.config import load_group_option
from segaudit.core.devices import amp_dtype
from segaudit.core.errors import ConfigError
from segaudit.data import build_dataset, eval_loader, prepare_dataset
from segaudit.data.conditions import DeviceImages
from segaudit.measure.evaluation import batch_indices, predict_logits
from segaudit.measure.evidence import Bootstrap, Estimate, audit_evidence
from segaudit.measure.information import ImageScores, PerImage
from segaudit.measure.metrics import AgreementMatrix, ConfusionMatrix
from segaudit.measure.prior import PriorResult
from segaudit.models.checkpoints import TrainedModel
from segaudit.models.inference import Inference

CONDITIONS = ("real", "noise", "blank", "shuffled")


@dataclass
class AuditFindings:
    """What an audit's measurements say about a model.

    Attributes:
        miou: mIoU by input condition (real, noise, blank, shuffled).
        prior_miou: the analytic prior's mIoU; majority_miou: the global majority's.
        content_gain: real minus prior, in mIoU points.
        evidence: the information evidence with its intervals (`audit_evidence`).
        red_flags: one line per flag that fired (empty: the model reads the image).
        finding: where to look against the mIoU the user's own pipeline reported.
        flag_kinds: `red_flags` by the question each answers (`flags_by_kind`; empty
            under `gate.rule: miou`).
    """

    miou: dict[str, float]
    prior_miou: float
    majority_miou: float
    content_gain: float
    evidence: dict
    red_flags: list[str]
    finding: str | None
    flag_kinds: dict[str, str] = field(default_factory=dict)


def audit_findings(
    results: dict[str, dict],
    per_image: dict[str, PerImage],
    prior: PriorResult,
    gate: DictConfig,
    reported_miou: float | None,
) -> AuditFindings:
    """The findings of measured conditions: the information evidence with its intervals
    and the red flags on it (`gate.rule: miou`: the investigation's mIoU rules), and the
    finding against a reported mIoU."""
    miou = {name: results[name]["miou"] for name in CONDITIONS}
    rules = gate.evidence
    found = audit_evidence(
        per_image,
        prior.reference["location"],
        prior.reference["global"],
        Bootstrap(len(per_image["real"]), int(rules.draws), float(rules.confidence)),
    )
    literal = gate.get("rule", "evidence") == "miou"
    at_prior = prior.per_pixel["miou"]
    kinds = {} if literal else flags_by_kind(found, miou, at_prior, gate)
    flags = red_flags(miou, at_prior, gate) if literal else list(kinds.values())
    return AuditFindings(
        miou=miou,
        prior_miou=at_prior,
        majority_miou=prior.majority["miou"],
        content_gain=miou["real"] - at_prior,
        evidence=found,
        red_flags=flags,
        finding=reported_finding(
            miou["real"], at_prior, reported_miou, float(gate.fault_margin), None if literal else _at_prior(found)
        ),
        flag_kinds=kinds,
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


def given_dataset(cfg: DictConfig, trained: TrainedModel) -> DictConfig:
    dcfg = prepare_dataset(cfg.dataset, cfg.paths.cache)
    if int(dcfg.num_classes) != int(trained.saved.dataset.num_classes):
        raise ConfigError(
            f"dataset={dcfg.name} has {dcfg.num_classes} classes, the model predicts "
            f"{trained.saved.dataset.num_classes} (give a dataset.label_map)"
        )
    return dcfg


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
    batches = (
        (indices, images.to(device), others.to(device), target.to(device))
        for indices, (images, others, target) in zip(batch_indices(loader), loader)
    )
    inputs = ConditionInputs(dcfg.transform.mean, dcfg.transform.std, device)
    return measure_batches(predict, batches, inputs, num_classes, ignore_index, len(triples))


class ConditionInputs:
    """The audit's seeded noise and blank inputs for batches of normalised images, the
    noise generator seeded afresh (`noise`, `blank`: their configs, composed once by a
    caller that measures again and again)."""

    def __init__(self, mean, std, device: torch.device, noise: DictConfig | None = None, blank=None):
        noise = noise if noise is not None else load_group_option("condition", "noise")
        blank = blank if blank is not None else load_group_option("condition", "blank")
        self.noise = DeviceImages(noise, mean, std, device, seeded=True)
        self.blank = DeviceImages(blank, mean, std, device, seeded=True)


@dataclass
class StandIns:
    """Which masks a batch's real images stand in for as "another image's pixels": when
    every image is fed at one size, the shuffled input's prediction *is* the other image's
    real prediction, so it is scored again rather than predicted again.

    Attributes:
        indices: the positions of the masks this batch's images are paired with.
        target: those masks, in the batch's order.
    """

    indices: torch.Tensor
    target: torch.Tensor


class ConditionScores:
    """Every audit condition's metrics and per-image scores, filled batch by batch: the
    real predictions first (they are what the noise predictions are compared with), then
    noise, blank and shuffled in any order.

    Args:
        num_classes: the model's classes.
        ignore_index: the unlabelled value of the masks.
        n_images: the images scored (positions 0 .. n_images - 1).
        keep_labels: keep each image's real prediction (argmax), so that the other
            conditions can be added later without predicting the real images again.
    """

    def __init__(self, num_classes: int, ignore_index: int, n_images: int, keep_labels: bool = False):
        self.metrics = {
            "real": ConfusionMatrix(num_classes, ignore_index),
            "noise": AgreementMatrix(num_classes, ignore_index),  # noise vs the real predictions
            "blank": ConfusionMatrix(num_classes, ignore_index),
            "shuffled": ConfusionMatrix(num_classes, ignore_index),
        }
        self.scores = {name: ImageScores(num_classes, ignore_index, n_images) for name in self.metrics}
        # one byte a pixel where the classes fit: the subset's predictions held until a check
        self.label_dtype = torch.uint8 if num_classes <= 256 else torch.int64
        self.labels: dict[int, torch.Tensor] | None = {} if keep_labels else None

    def add_real(
        self, indices: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, others: StandIns | None = None
    ) -> torch.Tensor:
        """The real images' logits (at the labels' size); `others`: the masks they stand in
        for as another image's pixels (the shuffled condition, scored on these logits).
        Returns the predicted labels."""
        labels = logits.argmax(1)
        self.metrics["real"].update(labels, target)
        self.scores["real"].update(indices, logits, target, labels)
        if others is not None:
            self.metrics["shuffled"].update(labels, others.target)
            self.scores["shuffled"].update(others.indices, logits, others.target, labels)
        if self.labels is not None:
            for k, row in zip(indices.tolist(), labels.to(self.label_dtype)):
                self.labels[k] = row
        return labels

    def real_labels(self, indices: torch.Tensor) -> torch.Tensor:
        """The kept real predictions of the images at `indices` (`keep_labels`)."""
        return torch.stack([self.labels[k] for k in indices.tolist()]).long()

    def add_noise(self, indices: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, real_labels: torch.Tensor):
        labels = logits.argmax(1)
        self.metrics["noise"].update(labels, target, real_labels)
        self.scores["noise"].update(indices, logits, target, labels)

    def add(self, name: str, indices: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        """`blank` or `shuffled` logits of the images at `indices`."""
        labels = logits.argmax(1)
        self.metrics[name].update(labels, target)
        self.scores[name].update(indices, logits, target, labels)

    def compute(self) -> tuple[dict[str, dict], dict[str, PerImage]]:
        return (
            {name: m.compute() for name, m in self.metrics.items()},
            {name: s.compute() for name, s in self.scores.items()},
        )


def measure_batches(
    predict,
    batches,
    inputs: ConditionInputs,
    num_classes: int,
    ignore_index: int,
    n_images: int,
    seen: ConditionScores | None = None,
) -> tuple[dict[str, dict], dict[str, PerImage]]:
    """Every audit condition's metrics and per-image scores over `batches` of (dataset
    positions, real images, another image for each, labels), all on one device;
    `predict(images, size=...)` gives logits at the labels' size.

    The other images may come as `StandIns` instead: the shuffled condition then costs no
    forward pass. The blank input is one constant image, so it is predicted once per run of
    batches of one size. `seen`: the real condition already scored (with `keep_labels`),
    from predictions made elsewhere, such as a trainer's own validation pass; the real
    images are then not predicted again.
    """
    scores = seen if seen is not None else ConditionScores(num_classes, ignore_index, n_images)
    blank_key, blank_one = None, None  # one size held: a val set of many sizes must not fill memory
    for indices, images, others, target in batches:
        size = tuple(target.shape[-2:])
        if seen is None:
            real_labels = scores.add_real(
                indices, predict(images, size=size), target, others if isinstance(others, StandIns) else None
            )
        else:
            real_labels = seen.real_labels(indices).to(target.device)
        scores.add_noise(indices, predict(inputs.noise(images), size=size), target, real_labels)

        if blank_key != (images.shape[1:], size):
            blank_key, blank_one = (images.shape[1:], size), predict(inputs.blank(images[:1]), size=size)
        scores.add("blank", indices, blank_one.expand(len(images), *blank_one.shape[1:]), target)

        if not isinstance(others, StandIns):
            scores.add("shuffled", indices, predict(others, size=size), target)
    return scores.compute()


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
    return list(flags_by_kind(found, miou, prior, gate).values())


def flags_by_kind(found: dict, miou: dict[str, float], prior: float, gate: DictConfig) -> dict[str, str]:
    """`evidence_flags` by the question each answers: `prior` (no more than the analytic
    prior), `shuffled` (no more than another image's pixels: no aligned content reaches
    the model) and `noise` (it keeps its score on noise: location carries it)."""
    flags = {}
    if found["bits"]:
        content = Estimate.from_dict(found["information"]["content"])
        if _at_prior(found):
            flags["prior"] = (
                f"real-image predictions explain no more than the analytic prior: content "
                f"{content.text(3)} bits/pixel (mIoU {miou['real']:.1f} vs prior {prior:.1f}): "
                f"it does not use the image's content"
            )
        versus = Estimate.from_dict(found["versus"]["shuffled"]["bits"])
        if not versus.above_zero:
            flags["shuffled"] = (
                f"its own image helps no more than another image's pixels: {versus.text(3)} "
                f"bits/pixel (mIoU {miou['real']:.1f} vs {miou['shuffled']:.1f} on another image)"
            )
        kept = Estimate.from_dict(found["noise_retained"])
        share = float(gate.evidence.location_share)
        if kept.low > share:
            flags["noise"] = (
                f"on noise input it keeps {kept.value:.0%} [{kept.low:.0%}, {kept.high:.0%}] of what "
                f"it explains on real images (> {share:.0%}): it predicts where classes usually "
                f"are, not what it sees"
            )
        return flags
    gain = Estimate.from_dict(found["miou_gain"])
    if _at_prior(found):
        flags["prior"] = (
            f"real-image mIoU {miou['real']:.1f} is not above the analytic prior {prior:.1f} "
            f"({gain.text(1)} points): it does not use the image's content"
        )
    versus = Estimate.from_dict(found["versus"]["shuffled"]["miou"])
    if not versus.above_zero:
        flags["shuffled"] = (
            f"real-image mIoU {miou['real']:.1f} is not above its score on another image's "
            f"pixels {miou['shuffled']:.1f} ({versus.text(1)} points)"
        )
    ratio = gate.red_flags.noise_ratio
    if ratio is not None and miou["noise"] > float(ratio) * miou["real"]:
        flags["noise"] = (
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
