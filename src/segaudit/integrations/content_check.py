"""The audit on a training loop's own data, with no framework: a fixed validation subset
under real, noise, blank and shuffled input against the analytic prior of the training
labels, the information evidence with its intervals, and the red flags.

    monitor = ContentMonitor.from_batches(val_loader, train_masks, num_classes=19)
    for step in range(iters):
        ...
        if step % 500 == 0:
            result = monitor.check(model, step, on_flag="stop")   # warn | stop | raise
            if result.stop:
                break
    monitor.write_record(result, runs="runs", strategy="my-run")

The numbers are the ones `segaudit audit` gives for the same model on the same images,
because both go through `diagnostics.audit.measure_batches` and `audit_findings`.
`monitor.watch(model)` before a validation pass that feeds the subset first lets the
check take its real predictions from that pass (what the Lightning and HF callbacks do).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segaudit import runs as run_store
from segaudit.core.config import compose, load_group_option
from segaudit.core.devices import device_label
from segaudit.core.errors import ConfigError, SegauditError
from segaudit.data.conditions import derangement
from segaudit.data.sampler import size_grouped_batches
from segaudit.diagnostics.audit import (
    AuditFindings,
    ConditionInputs,
    ConditionScores,
    StandIns,
    audit_findings,
    measure_batches,
)
from segaudit.diagnostics.verdict import doublings_to_reach, learning_state, share_decelerating
from segaudit.measure.evidence import Bootstrap, Comparison, Estimate, Information, bits, compare
from segaudit.measure.information import PerImage
from segaudit.measure.prior import PriorResult, count_masks, prior_of_masks
from segaudit.models.sources import select_output
from segaudit.workflows.recording import record_finished

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ON_FLAG = ("warn", "stop", "raise")
_PAIR_KEYS = (("image", "mask"), ("images", "masks"), ("pixel_values", "labels"))


class ContentRedFlags(SegauditError):
    """A content check during training found red flags (`on_flag="raise"`)."""

    exit_code = 1

    def __init__(self, flags: list[str], step: int):
        super().__init__(f"step {step}: " + "; ".join(flags))
        self.flags, self.step = flags, step


def check_settings(owner: str, on_flag: str, every: int, subset: int) -> None:
    """Refuse a callback's settings in one line before any training starts."""
    if on_flag not in ON_FLAG:
        raise ConfigError(f"{owner}(on_flag='{on_flag}'): use one of {', '.join(ON_FLAG)}")
    if every < 1 or subset < 2:
        raise ConfigError(f"{owner}: checking every {every} evaluations on {subset} images; use >= 1 and >= 2")


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, masks) of a batch: a tuple or list (first two items), or a mapping with
    `image`/`mask`, `images`/`masks` or `pixel_values`/`labels`.

    Raises:
        ConfigError: a batch of another shape (give `batch_to_pair`).
    """
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    if hasattr(batch, "keys"):
        for image_key, mask_key in _PAIR_KEYS:
            if image_key in batch and mask_key in batch:
                return batch[image_key], batch[mask_key]
        raise ConfigError(f"a batch with keys {sorted(batch.keys())}: give batch_to_pair to pick images and masks")
    raise ConfigError(f"a batch of type {type(batch).__name__}: give batch_to_pair to pick images and masks")


def masks_of(batches: Iterable, batch_to_pair=split_batch, limit: int | None = None) -> Iterator[np.ndarray]:
    """Every label map of `batches` as an H x W array, at most `limit` of them."""
    seen = 0
    for batch in batches:
        for mask in batch_to_pair(batch)[1]:
            if limit is not None and seen >= limit:
                return
            seen += 1
            yield mask.detach().cpu().numpy()


def logits_of(output: Any) -> torch.Tensor:
    """The logits in what a model returns (a tensor, `out`/`logits` key or attribute, a tuple)."""
    if not isinstance(output, torch.Tensor) and hasattr(output, "logits") and not hasattr(output, "keys"):
        return output.logits
    return select_output(output, None)


@dataclass
class _Check:
    """What a later check needs of an earlier one."""

    step: int
    real: PerImage  # the real-input scores per image
    shuffled: PerImage  # each mask scored on another image's prediction
    share: float  # content's share of what the model explains
    shortcut: bool = False  # location carried the score, learning flat or slow


@dataclass
class ContentCheckResult:
    """One check of a model during training.

    Attributes:
        step: the training step it was measured at.
        findings: the audit's findings (mIoU by input, prior, evidence, red flags).
        results: each condition's metrics (`ConfusionMatrix.compute`).
        seconds: how long the check took.
        stop: whether the check asked the training to stop (`on_flag="stop"`).
        location_part: what the model explains over what location explains.
        state: `learning location` (under `gate.evidence.location_learned` at every check
            so far; a model that falls back below it later overfits), `no check at
            half this step`, or the diagnose's learning state over the last doubling of
            training: `rising`, `flat`, `slow` (as good as flat) or `unclear`.
        rise: bits/pixel and mIoU points gained since the check at half this step (None:
            no such check).
        own_image_gain: how much more the own image helps than another image's pixels
            (bits/pixel) than it did at the check at half this step (None: no such check).
        flags: the red flags that count now (`training_flags`; `gate.rule: miou`: the
            audit's, at every check).
        held: the audit's red flags that do not count yet.
        real_pass: `trainer` when the real images' predictions were the ones the trainer's
            own validation made (`ContentMonitor.watch`), `check` when the check made them.
        autocast: the autocast dtype of the trainer's validation the check took its real
            predictions from, the other inputs predicted alike (None: full precision).
    """

    step: int
    findings: AuditFindings
    results: dict[str, dict]
    seconds: float
    location_part: float
    state: str
    rise: Comparison | None = None
    own_image_gain: Estimate | None = None
    stop: bool = False
    flags: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    real_pass: str = "check"
    autocast: str | None = None

    def scalars(self, prefix: str = "segaudit/") -> dict[str, float]:
        """The values a training logger plots: mIoU by input, the prior's, the content
        information with its interval (bits/pixel), the noise-retained share, the flags."""
        found = self.findings
        out = {f"{prefix}miou_{name}": float(value) for name, value in found.miou.items()}
        out[f"{prefix}miou_prior"] = float(found.prior_miou)
        if found.evidence.get("bits"):
            content = Estimate.from_dict(found.evidence["information"]["content"])
            out.update(
                {
                    f"{prefix}content_bits": content.value,
                    f"{prefix}content_bits_low": content.low,
                    f"{prefix}content_bits_high": content.high,
                    f"{prefix}noise_retained": Estimate.from_dict(found.evidence["noise_retained"]).value,
                }
            )
        out[f"{prefix}location_part"] = float(self.location_part)
        if self.rise is not None:
            out[f"{prefix}rise_bits"] = self.rise.bits.value
        if self.own_image_gain is not None:
            out[f"{prefix}own_image_gain_bits"] = self.own_image_gain.value
        out[f"{prefix}red_flags"] = float(len(self.flags))
        return out


class ContentMonitor:
    """The audit of one model on a fixed validation subset held on the device.

    Args:
        images: N x 3 x H x W normalised images, as the model takes them, or a list of
            3 x H x W images of several sizes.
        masks: N x H x W class ids (`ignore_index` where unlabelled), or a list of H x W.
        prior: the analytic prior of the training labels, scored on `masks`
            (`prior_of_masks`).
        num_classes: the model's output channels.
        ignore_index: the unlabelled value in `masks`.
        mean, std: the normalisation of `images`, so noise and blank inputs match it.
        gate: a `conf/gate` option: the evidence rules and their intervals.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        masks: torch.Tensor | Sequence[torch.Tensor],
        prior: PriorResult,
        num_classes: int,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        gate: str = "default",
        batch_size: int = 8,
    ):
        if len(images) < 2:
            raise ConfigError("the content check needs at least 2 validation images (the shuffled input)")
        self.images, self.prior = images, prior
        self.masks = masks.long() if isinstance(masks, torch.Tensor) else [m.long() for m in masks]
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.mean, self.std = list(mean), list(std)
        self.gate = load_group_option("gate", gate)
        self.batch_size = int(batch_size)
        self.others = derangement(len(images), int(load_group_option("condition", "shuffled").seed))
        sizes = [(tuple(i.shape[-2:]), tuple(m.shape[-2:])) for i, m in zip(images, self.masks, strict=True)]
        # One size: image j is "another image" for the mask i with others[i] == j, so j's
        # real prediction is scored against mask i instead of predicted again. Several:
        # image j is resized to image i's size and predicted, as the audit does.
        self.one_size = len(set(sizes)) == 1
        self.stands_for = torch.empty(len(self.others), dtype=torch.long)
        self.stands_for[torch.tensor(self.others)] = torch.arange(len(self.others))
        self.batches = [torch.tensor(b) for b in size_grouped_batches(sizes, self.batch_size)]
        self.conditions = {name: load_group_option("condition", name) for name in ("noise", "blank")}
        self.last: ContentCheckResult | None = None
        self.curve: list[_Check] = []  # the earlier checks a later one looks back to
        self.learned_at: int | None = None  # the first check where the model knew where classes sit
        self.boot = Bootstrap(len(images), int(self.gate.evidence.draws), float(self.gate.evidence.confidence))
        self.device = torch.device("cpu")
        self._seen: ConditionScores | None = None  # the real condition, from the trainer's forward passes
        self._seen_count = 0
        self._seen_autocast: tuple[str, torch.dtype] | None = None
        self._hook = None

    @classmethod
    def from_batches(
        cls,
        val_batches: Iterable,
        train_masks: Iterable,
        num_classes: int,
        subset: int = 32,
        ignore_index: int = 255,
        batch_to_pair=split_batch,
        **settings,
    ) -> ContentMonitor:
        """A monitor on the first `subset` validation images of `val_batches` (of one size or
        several), with the prior counted from `train_masks` (H x W label maps, arrays or
        tensors) at the subset masks' most common size.

        `settings` are the other `ContentMonitor` arguments (mean, std, gate, batch_size).
        """
        images, masks = [], []
        for batch in val_batches:
            pair = batch_to_pair(batch)
            images += list(pair[0][: subset - len(images)])
            masks += list(pair[1][: subset - len(masks)])
            if len(images) >= subset:
                break
        if not images:
            raise ConfigError("the validation data gave no images for the content check")
        _check_shapes(images, masks)
        if len({(tuple(i.shape), tuple(m.shape)) for i, m in zip(images, masks)}) == 1:
            images = torch.stack([i.detach().cpu() for i in images])
            masks = torch.stack([m.detach().cpu() for m in masks]).long()
        else:
            images, masks = [i.detach().cpu() for i in images], [m.detach().cpu().long() for m in masks]
        # the prior is counted at the masks' most common size and scored on each at its own
        size = Counter(tuple(m.shape[-2:]) for m in masks).most_common(1)[0][0]
        counts = count_masks(train_masks, size, int(num_classes), int(ignore_index))
        if counts.sum() == 0:
            raise ConfigError("the training masks hold no labelled pixel: the prior needs them")
        prior = prior_of_masks(counts, [m.numpy() for m in masks], int(ignore_index))
        return cls(images, masks, prior, num_classes, ignore_index, **settings)

    def _batches(self, device: torch.device):
        for index in self.batches:
            images, masks = _take(self.images, index), _take(self.masks, index)
            if self.one_size:
                paired = self.stands_for[index]
                others = StandIns(paired, _take(self.masks, paired).to(device))
            else:
                size = tuple(images.shape[-2:])
                others = torch.stack([_fitted(self.images[self.others[k]], size) for k in index.tolist()]).to(device)
            yield index, images.to(device), others, masks.to(device)

    @torch.inference_mode()
    def measure(self, model: nn.Module, step: int = 0) -> ContentCheckResult:
        """`model` (in eval mode for the check, put back after) under every input condition."""
        t0 = time.perf_counter()
        weights = next(iter(model.parameters()), None)
        device = weights.device if weights is not None else torch.device("cpu")
        self.device = device
        seen = self._seen if self._seen_count == len(self.images) else None
        autocast = self._seen_autocast if seen is not None else None
        self.unwatch()
        self._seen, self._seen_count = None, 0  # a validation's predictions serve one check
        was_training = model.training
        model.eval()
        try:
            # the other inputs at the precision the trainer's real predictions were made in
            with torch.autocast(*autocast) if autocast else contextlib.nullcontext():
                results, per_image = measure_batches(
                    partial(_predict, model),
                    self._batches(device),
                    ConditionInputs(self.mean, self.std, device, **self.conditions),
                    self.num_classes,
                    self.ignore_index,
                    len(self.images),
                    seen=seen,
                )
        finally:
            model.train(was_training)
        found = audit_findings(results, per_image, self.prior, self.gate, None)
        self.last = self._judge(step, found, results, per_image, time.perf_counter() - t0)
        self.last.real_pass = "check" if seen is None else "trainer"
        self.last.autocast = str(autocast[1]).removeprefix("torch.") if autocast else None
        return self.last

    def watch(self, model: nn.Module) -> None:
        """Score the subset's real predictions from `model`'s own forward passes until the
        next `measure`, so that the check does not predict the real images again.

        A trainer's validation feeds the val loader's first images first: each forward pass
        in eval mode whose input batch (the first positional argument, or `pixel_values`)
        starts with the next subset images, exactly, is scored as theirs. Other passes
        (a flipped copy for test-time augmentation, a second pass on the same batch) are
        left alone. A validation under autocast (mixed precision) gives the check's other
        inputs that autocast too, so that every condition is predicted alike. If the
        subset is not complete by the check, the check predicts the real images itself,
        at full precision.
        """
        self.unwatch()
        self._seen = ConditionScores(self.num_classes, self.ignore_index, len(self.images), keep_labels=True)
        self._seen_count = 0
        self._seen_autocast = None
        self._hook = model.register_forward_hook(self._on_forward, with_kwargs=True)

    def unwatch(self) -> None:
        """Stop scoring the model's forward passes (`watch`)."""
        if self._hook is not None:
            self._hook.remove()
        self._hook = None

    @torch.inference_mode()
    def _on_forward(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        images = args[0] if args else kwargs.get("pixel_values")
        start = self._seen_count
        if module.training or start >= len(self.images) or not isinstance(images, torch.Tensor):
            return
        kind = images.device.type
        autocast = (kind, torch.get_autocast_dtype(kind)) if torch.is_autocast_enabled(kind) else None
        if images.dim() != 4 or (start and autocast != self._seen_autocast):
            return
        index = torch.arange(start, min(start + len(images), len(self.images)))
        if not self._are_subset_images(images, index):
            return
        self._seen_autocast = autocast
        device = images.device
        target = _take(self.masks, index).to(device)
        logits = _at_size(logits_of(output)[: len(index)], target.shape[-2:])
        others = None
        if self.one_size:
            paired = self.stands_for[index]
            others = StandIns(paired, _take(self.masks, paired).to(device))
        self._seen.add_real(index, logits, target, others)
        self._seen_count += len(index)

    def _are_subset_images(self, images: torch.Tensor, index: torch.Tensor) -> bool:
        """Whether the batch starts with the subset images at `index`, exactly."""
        sizes = {tuple(self.images[k].shape) for k in index.tolist()} | {tuple(images.shape[1:])}
        if len(sizes) != 1 or len({tuple(self.masks[k].shape) for k in index.tolist()}) != 1:
            return False
        expected = _take(self.images, index).to(images.device)
        return images.dtype == expected.dtype and torch.equal(images[: len(index)], expected)

    def _judge(
        self, step: int, found: AuditFindings, results: dict, per_image: dict[str, PerImage], seconds: float
    ) -> ContentCheckResult:
        """The check's result: where the model is in training and which red flags count."""
        rules = self.gate.evidence
        info = Information.from_dict(found.evidence["information"])
        if self.learned_at is None and info.location_part >= float(rules.location_learned):
            self.learned_at = int(step)
        learned = self.learned_at is not None  # past the start: a model that falls back overfits
        real, shuffled = per_image["real"], per_image["shuffled"]
        half = self._earlier(step, 1)
        rise = compare(real, half.real, self.boot) if half else None
        gain = self._own_image_gain(real, shuffled, half) if half else None
        shares = {c.step: c.share for c in self.curve} | {int(step): info.content_share.value}
        # The pace is content's only once content surely shows (as in the diagnose).
        slowing = info.content.above_zero and share_decelerating(shares, int(step))
        doublings = doublings_to_reach(shares, int(step), rules) if slowing else None
        if not learned:
            state = "learning location"
        else:
            state = learning_state(rise, rules, doublings) if half else "no check at half this step"
        kinds = found.flag_kinds  # empty under gate.rule: miou
        if self.gate.get("rule", "evidence") == "miou":  # the investigation's literal rule, at every check
            counted = list(found.red_flags)
        else:
            since = math.log2(step / max(self.learned_at, 1)) if learned and step > 0 else 0.0
            stalled = gain is not None and gain.high < float(rules.min_content_bits)
            counted = training_flags(
                kinds, learned, state, since, int(rules.fault_doublings), bool(half and half.shortcut), stalled
            )
        shortcut = learned and location_carries(kinds, state)
        self._remember(_Check(int(step), real, shuffled, info.content_share.value, shortcut))
        return ContentCheckResult(
            step,
            found,
            results,
            seconds,
            info.location_part,
            state,
            rise=rise,
            own_image_gain=gain,
            flags=counted,
            held=[flag for flag in found.red_flags if flag not in counted],
        )

    def _own_image_gain(self, real: PerImage, shuffled: PerImage, before: _Check) -> Estimate:
        """The own image's advantage over another image's pixels now, less the same at
        `before`: paired over the subset's images (bits/pixel)."""

        def gain(w):
            return (bits(shuffled, w) - bits(real, w)) - (bits(before.shuffled, w) - bits(before.real, w))

        return self.boot.estimate(gain)

    def _earlier(self, step: int, doublings: int) -> _Check | None:
        """The last check at or before step / 2**doublings (and before `step`)."""
        return next((c for c in reversed(self.curve) if c.step <= step / 2**doublings and c.step < step), None)

    def _remember(self, check: _Check) -> None:
        """Keep `check`, and drop the checks no later check looks back to (later checks
        look back no further than two doublings of training from this one, for the pace)."""
        half = self._earlier(check.step, 1)
        oldest = self._earlier(half.step, 1) if half else None
        self.curve = [c for c in self.curve if oldest is None or c.step >= oldest.step] + [check]

    def check(self, model: nn.Module, step: int, on_flag: str = "warn") -> ContentCheckResult:
        """`measure`, then act on the red flags that count (`ContentCheckResult.flags`):
        warn (a `UserWarning`), stop (`result.stop`), or raise `ContentRedFlags`. `step`,
        the training step, places the check on the training curve: flags count by doublings
        of it."""
        if on_flag not in ON_FLAG:
            raise ConfigError(f"on_flag='{on_flag}': use one of {', '.join(ON_FLAG)}")
        result = self.measure(model, step)
        if result.flags:
            if on_flag == "raise":
                raise ContentRedFlags(result.flags, step)
            warnings.warn(f"segaudit content check, step {step}: " + "; ".join(result.flags), stacklevel=2)
            result.stop = on_flag == "stop"
        return result

    def write_record(
        self,
        result: ContentCheckResult,
        runs: str = "runs",
        strategy: str = "training",
        model_name: str = "training-model",
        dataset_name: str = "training-data",
        class_names: Sequence[str] | None = None,
        command: str = "segaudit content check",
    ) -> run_store.RunRecord:
        """One `phase=audit` record of `result` under the runs folder `runs`, so the run
        lands in `segaudit report` and `segaudit scope` beside `segaudit audit`'s records."""
        cfg = compose([f"paths.runs={runs}"])
        cfg.phase, cfg.strategy, cfg.run_id = "audit", str(strategy), None
        names = list(class_names) if class_names else [f"class {k}" for k in range(self.num_classes)]
        cfg.dataset.name, cfg.dataset.root, cfg.dataset.class_names = str(dataset_name), None, names
        found = result.findings
        by_condition = result.results
        block = {
            "source": str(model_name),
            "source_run": None,
            "miou": found.miou,
            "prior_miou": found.prior_miou,
            "majority_miou": found.majority_miou,
            "content_gain": found.content_gain,
            "inference": {"mode": "whole", "subset": len(self.images)},
            "agreement_real_noise": by_condition["noise"]["agreement"],
            "metrics": by_condition,
            "evidence": found.evidence,
            "red_flags": found.red_flags,
            "reported_miou": None,
            "finding": found.finding,
            "probe": None,
            # where training stood at this check, and which of `red_flags` counted there
            "training_check": {
                "state": result.state,
                "location_part": result.location_part,
                "rise": result.rise.as_dict() if result.rise else None,
                "own_image_gain": result.own_image_gain.as_dict() if result.own_image_gain else None,
                "flags": result.flags,
                "held": result.held,
                "real_pass": result.real_pass,
                "autocast": result.autocast,
            },
        }
        folder, record = run_store.open_run(
            cfg,
            command,
            model=str(model_name),
            encoder=str(model_name),
            eval_condition="real",
            status="completed",
            step=int(result.step),
            metrics=by_condition["real"],
            metrics_by_condition=by_condition,
            history=[{"step": int(result.step), "condition": n, **m} for n, m in by_condition.items()],
            device=device_label(self.device),
            finished_at=run_store.now(),
            audit=block,
        )
        return record_finished(cfg, folder, record, result.seconds)


def location_carries(kinds: dict[str, str], state: str) -> bool:
    """Content surely shows beyond the prior (no `prior` flag), yet the model keeps its
    score on noise (`noise` flag), and learning is `flat` or `slow` (content's share would
    need more than `reach_doublings` doublings of training at a pace that no longer grows)."""
    return state in ("flat", "slow") and "prior" not in kinds and "noise" in kinds


def training_flags(
    kinds: dict[str, str],
    learned: bool,
    state: str,
    doublings_since: float,
    fault_doublings: int,
    shortcut_before: bool = False,
    own_image_stalled: bool = False,
) -> list[str]:
    """The red flags that count during training, of the audit's (`flags_by_kind`).

    Early on every model, clean or broken, predicts where classes sit, and on data learned
    slowly a clean model reads content only some doublings of training after that
    (measured on the texture scenes: docs/check-every-training.md). So nothing counts
    before the model knows where classes sit (`learned`). Then, as the diagnose asks:

    - no content reaches the model, `fault_doublings` or more doublings of training after
      the location was learned (`doublings_since`): "its own image helps no more than
      another image's pixels", or "it explains no more than the analytic prior" while the
      own image's help over another's surely stopped growing (`own_image_stalled`: masks
      put on other images before a crop that image and mask share leave the own image a
      sliver of help; a clean model still at the prior is learning to read, and that help
      grows). Every flag counts.
    - location carries the score (`location_carries`), now and at the check a doubling of
      training before (`shortcut_before`: a pace read off noisy shares once can look
      slow); the `noise` flag counts.
    """
    if not learned:
        return []
    no_content = "shuffled" in kinds or ("prior" in kinds and own_image_stalled)
    if no_content and doublings_since >= fault_doublings:
        return list(kinds.values())
    if shortcut_before and location_carries(kinds, state):
        return [kinds["noise"]]
    return []


def _check_shapes(images: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    """Refuse, in one line, a subset the check cannot feed: images must be C x H x W and
    masks H x W."""
    for k, (image, mask) in enumerate(zip(images, masks, strict=True)):
        if image.dim() != 3 or mask.dim() != 2:
            raise ConfigError(
                f"validation image {k} has shape {tuple(image.shape)} and its mask {tuple(mask.shape)}: "
                "the content check needs C x H x W images and H x W masks (give batch_to_pair)"
            )


def _take(items: torch.Tensor | Sequence[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    """`items[index]` of a stacked tensor or a list of tensors of one size."""
    if isinstance(items, torch.Tensor):
        return items[index]
    return torch.stack([items[k] for k in index.tolist()])


def _fitted(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`image` (C x H x W) resized to `size`, bilinear, as another image fed for a mask."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0]


def _predict(model: nn.Module, images: torch.Tensor, size) -> torch.Tensor:
    """Logits at the labels' size, upsampled as the audit does (SegFormer's 1/4 output)."""
    return _at_size(logits_of(model(images)), size)


def _at_size(logits: torch.Tensor, size) -> torch.Tensor:
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=tuple(size), mode="bilinear")
    return logits
