"""Statistical evidence from per-image scores: what location and content explain, in
bits per pixel, and mIoU, each with a bootstrap interval over val images.

Everything here takes `PerImage` arrays (`segaudit.measure.information`) and returns numbers;
nothing reads or writes a file.

- The labels' cross-entropy under the global class frequencies (`entropy`) is what a
  predictor knowing only how common each class is leaves unexplained.
- Location explains `entropy - prior`: the analytic prior's per-pixel frequencies.
- Content explains `prior - model`: what the model's probabilities, which saw the image,
  add on top. It is the *content information*; no predictor that ignores the image can
  beat the prior on held-out labels by more than chance, so a content information
  significantly above zero means image content reached the model.
- What is left is the model's own cross-entropy.

Intervals resample val images with replacement (percentile bootstrap). Two predictors
scored on the same images are compared with the same resamples (a paired bootstrap), so
the interval of a difference reflects only how the two disagree image by image. For
mIoU each resample sums the images' per-class counts, i.e. resamples the confusion
matrix image by image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from segaudit.measure.information import PerImage

DRAWS = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval."""

    value: float
    low: float
    high: float

    @property
    def above_zero(self) -> bool:
        """The whole interval lies above zero: significantly positive."""
        return self.low > 0

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, value: dict) -> Estimate:
        return cls(float(value["value"]), float(value["low"]), float(value["high"]))

    def percent(self) -> str:
        """A fraction as `15% [7%, 23%]` (whole percent, no "-0%")."""
        return f"{round(self.value * 100)}% [{round(self.low * 100)}%, {round(self.high * 100)}%]"

    def text(self, digits: int = 2, unit: str = "") -> str:
        """`0.19 [0.15, 0.23]` style."""
        return f"{self.value:+.{digits}f}{unit} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


class Bootstrap:
    """Resamples of N images (multinomial counts, `draws` x N), shared by every statistic
    computed through one instance so that differences are paired."""

    def __init__(self, n_images: int, draws: int = DRAWS, level: float = LEVEL, seed: int = 0):
        if n_images < 1:
            raise ValueError("the bootstrap needs at least one image")
        rng = np.random.default_rng(seed)
        self.weights = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=draws).astype(np.float64)
        self.level = level
        # One diagnose stage resamples the same predictors (the prior, each evaluated
        # step) in many statistics; their sums are kept with the arrays they came from,
        # so an id is not reused while it is a key.
        self._sums: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per-image `values` (N x ...) summed per resample (draws x ...), computed once
        per array."""
        hit = self._sums.get(id(values))
        if hit is not None and hit[0] is values:
            return hit[1]
        out = self.weights @ values.astype(np.float64, copy=False)
        out.flags.writeable = False
        if len(self._sums) >= SUMS_KEPT:
            self._sums.pop(next(iter(self._sums)))
        self._sums[id(values)] = (values, out)
        return out

    def estimate(self, statistic: Callable[[Bootstrap | None], float | np.ndarray]) -> Estimate:
        """`statistic(None)` on every image once, and its percentile interval over the
        resamples (`statistic(self)` returns one value per resample)."""
        return self.interval(float(statistic(None)), statistic(self))

    def interval(self, point: float, draws: np.ndarray) -> Estimate:
        """`point` with the percentile interval of its values over the resamples `draws`."""
        draws = np.asarray(draws, dtype=np.float64)
        draws = draws[np.isfinite(draws)]
        if not math.isfinite(point) or draws.size == 0:
            return Estimate(point, math.nan, math.nan)
        tail = (1.0 - self.level) / 2 * 100
        low, high = np.percentile(draws, [tail, 100 - tail])
        return Estimate(point, float(low), float(high))


SUMS_KEPT = 128  # resampled sums one Bootstrap keeps (a stage uses a few dozen)
Resamples = Bootstrap | np.ndarray | None  # None: every image once; an array: draws x N weights


def _weighted(values: np.ndarray, resamples: Resamples) -> np.ndarray:
    """Per-image `values` summed over all images, or per resample."""
    if resamples is None:
        return values.sum(0, dtype=np.float64)
    if isinstance(resamples, Bootstrap):
        return resamples.sums(values)
    return resamples @ values.astype(np.float64, copy=False)


def bits(scores: PerImage, resamples: Resamples = None) -> np.ndarray | float:
    """Mean negative log2-likelihood per labelled pixel (per resample with `resamples`)."""
    return _weighted(scores.nll, resamples) / np.maximum(_weighted(scores.pixels, resamples), 1)


def miou(scores: PerImage, resamples: Resamples = None) -> np.ndarray | float:
    """mIoU in percent (mmseg convention: a class absent from truth and prediction is left
    out), per resample with `resamples`."""
    tp = _weighted(scores.tp, resamples)
    union = _weighted(scores.gt, resamples) + _weighted(scores.pred, resamples) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan) * 100.0
    with np.errstate(invalid="ignore"):
        if iou.ndim == 1:
            return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan
        out = np.full(iou.shape[0], np.nan)
        seen = np.isfinite(iou).any(1)
        out[seen] = np.nanmean(iou[seen], axis=1)
        return out


def check_paired(*scores: PerImage) -> None:
    """Raise ValueError unless every predictor was scored on the same labelled pixels."""
    first = scores[0]
    for other in scores[1:]:
        if len(other) != len(first) or not np.array_equal(other.pixels, first.pixels):
            raise ValueError("per-image scores are not of the same images (labelled pixel counts differ)")


@dataclass
class Information:
    """A model's val labels explained, in bits per labelled pixel, with intervals."""

    entropy: Estimate  # cross-entropy under the global class frequencies
    location: Estimate  # entropy - prior: what the per-pixel frequencies explain
    content: Estimate  # prior - model: what the image adds (the content information)
    remaining: Estimate  # the model's own cross-entropy
    content_share: Estimate  # content / (location + content): the image's share of what is explained
    miou: Estimate
    prior_miou: Estimate
    miou_gain: Estimate  # model - prior mIoU, paired

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {name: getattr(self, name).as_dict() for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, value: dict) -> Information:
        return cls(**{name: Estimate.from_dict(value[name]) for name in cls.__dataclass_fields__})

    @property
    def location_part(self) -> float:
        """What the model explains beyond the global frequencies, over what location
        explains: under 1 early in training, when every model, clean or broken, is still
        learning where classes sit; about 1 for a model that learned only the location."""
        explained = self.location.value + self.content.value
        return explained / self.location.value if self.location.value > 0 else 0.0

    def line(self) -> str:
        """One line: "location explains 1.09 bits/pixel, content 0.19 [0.15, 0.23], 1.27 remain"."""
        return (
            f"of {self.entropy.value:.2f} bits/pixel, location explains {self.location.value:.2f}, "
            f"content {self.content.value:+.2f} [{self.content.low:+.2f}, {self.content.high:+.2f}], "
            f"{self.remaining.value:.2f} remain"
        )


def information(model: PerImage, location: PerImage, glob: PerImage, boot: Bootstrap) -> Information:
    """The decomposition of one model's val cross-entropy against the prior (`location`)
    and the global frequencies (`glob`), all scored on the same images."""
    check_paired(model, location, glob)
    # Each statistic once on all images and once per resample; the estimates combine them.
    point = {name: (bits(s), miou(s)) for name, s in (("model", model), ("location", location), ("glob", glob))}
    drawn = {name: (bits(s, boot), miou(s, boot)) for name, s in (("model", model), ("location", location))}
    drawn["glob"] = (bits(glob, boot), None)

    def estimate(fn) -> Estimate:
        return boot.interval(float(fn(point)), fn(drawn))

    def share(v):
        loc, con = v["glob"][0] - v["location"][0], v["location"][0] - v["model"][0]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.divide(con, loc + con)

    return Information(
        entropy=estimate(lambda v: v["glob"][0]),
        location=estimate(lambda v: v["glob"][0] - v["location"][0]),
        content=estimate(lambda v: v["location"][0] - v["model"][0]),
        remaining=estimate(lambda v: v["model"][0]),
        content_share=estimate(share),
        miou=estimate(lambda v: v["model"][1]),
        prior_miou=estimate(lambda v: v["location"][1]),
        miou_gain=estimate(lambda v: v["model"][1] - v["location"][1]),
    )


@dataclass
class Comparison:
    """Model `a` against model `b` on the same images: `a` better by this much."""

    bits: Estimate  # b's cross-entropy - a's (bits/pixel): a's extra content information
    miou: Estimate  # a's mIoU - b's

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {"bits": self.bits.as_dict(), "miou": self.miou.as_dict()}

    @classmethod
    def from_dict(cls, value: dict) -> Comparison:
        return cls(Estimate.from_dict(value["bits"]), Estimate.from_dict(value["miou"]))


def compare(a: PerImage, b: PerImage, boot: Bootstrap) -> Comparison:
    """Paired differences of `a` over `b`: bits/pixel saved and mIoU points gained."""
    check_paired(a, b)
    return Comparison(
        bits=boot.estimate(lambda w: bits(b, w) - bits(a, w)), miou=boot.estimate(lambda w: miou(a, w) - miou(b, w))
    )


def diagnose_evidence(
    location: PerImage,
    glob: PerImage,
    baseline: dict[int, PerImage],
    shuffled: dict[int, PerImage],
    noise_input: dict[int, PerImage],
    step: int,
    boot: Bootstrap,
) -> dict:
    """The information evidence of a diagnose at the baseline's `step` (the fields of
    `segaudit.diagnostics.verdict.Evidence`, as JSON-able dicts).

    Args:
        location, glob: the analytic prior's and the global frequencies' per-image scores.
        baseline, shuffled: the real-pair model and the shuffled-pair control, per
            evaluated step; `noise_input`: the baseline fed noise, per step.
        step: the step the verdict rests on (evaluated for both models).

    Returns:
        `information`, `shuffled_information`, `noise_information` (`Information`),
        `versus_shuffled` (`Comparison` of baseline over control), `rise` (the baseline at
        `step` over itself at `rise_from`, the last evaluation at or before `step` / 2),
        `shuffled_rise` (the same for the control, when it was evaluated there) and
        `curve` (per evaluated step up to `step`: mIoU, content information and content's
        share, and where the control was evaluated its mIoU, the advantage over it, and
        the control's gain over its last doubling of training, `control_rise`).
    """
    base = baseline[step]
    out = {
        "information": information(base, location, glob, boot).as_dict(),
        "shuffled_information": information(shuffled[step], location, glob, boot).as_dict(),
        "noise_information": (
            information(noise_input[step], location, glob, boot).as_dict() if step in noise_input else None
        ),
        "versus_shuffled": compare(base, shuffled[step], boot).as_dict(),
        "rise": None,
        "rise_from": None,
        "shuffled_rise": None,
    }
    earlier = [s for s in baseline if s <= step // 2]
    if earlier:
        before = out["rise_from"] = max(earlier)
        out["rise"] = compare(base, baseline[before], boot).as_dict()
        if before in shuffled:
            out["shuffled_rise"] = compare(shuffled[step], shuffled[before], boot).as_dict()
    out["curve"] = [_curve_point(s, baseline[s], shuffled, location, glob, boot) for s in sorted(baseline) if s <= step]
    return out


def _curve_point(
    step: int, model: PerImage, shuffled: dict[int, PerImage], location: PerImage, glob: PerImage, boot: Bootstrap
) -> dict:
    info = information(model, location, glob, boot)
    point = {
        "step": step,
        "miou": info.miou.as_dict(),
        "content": info.content.as_dict(),
        "content_share": info.content_share.as_dict(),
        "shuffled_miou": None,
        "versus_shuffled": None,
        "control_rise": None,
    }
    control = shuffled.get(step)
    if control is not None:
        point["shuffled_miou"] = boot.estimate(lambda w: miou(control, w)).as_dict()
        point["versus_shuffled"] = compare(model, control, boot).bits.as_dict()
        earlier = [s for s in shuffled if s <= step // 2]
        if earlier:
            point["control_rise"] = compare(control, shuffled[max(earlier)], boot).bits.as_dict()
    return point


def audit_evidence(inputs: dict[str, PerImage], location: PerImage, glob: PerImage, boot: Bootstrap) -> dict:
    """The evidence of one model fed each audit input (`real`, `noise`, `blank`,
    `shuffled`: another image's pixels) on the same val images.

    Returns:
        `bits`: whether the model gave probabilities (predictions-only audits give labels;
        then every bits entry is None). Per input: its mIoU and (with bits) its content
        information, each with its interval; `versus`: the real input over each other input
        (`Comparison`); `noise_retained`: the share of what the model explains on real
        images that it still explains on noise (bits; with location carrying the score it
        approaches location's share), or None.
    """
    real = inputs["real"]
    has_bits = bool(np.isfinite(real.nll).all())
    entropy = lambda w: bits(glob, w)  # noqa: E731 - one expression, used twice below

    def retained(w):
        with np.errstate(invalid="ignore", divide="ignore"):
            return (entropy(w) - bits(inputs["noise"], w)) / (entropy(w) - bits(real, w))

    out = {
        "bits": has_bits,
        "inputs": {},
        "versus": {},
        "information": information(real, location, glob, boot).as_dict() if has_bits else None,
        "noise_retained": boot.estimate(retained).as_dict() if has_bits and "noise" in inputs else None,
    }
    for name, scores in inputs.items():
        out["inputs"][name] = {
            "miou": boot.estimate(lambda w, s=scores: miou(s, w)).as_dict(),
            "content": (
                boot.estimate(lambda w, s=scores: bits(location, w) - bits(s, w)).as_dict() if has_bits else None
            ),
        }
        if name != "real":
            versus = compare(real, scores, boot)
            out["versus"][name] = versus.as_dict() if has_bits else {"bits": None, "miou": versus.miou.as_dict()}
    out["miou_gain"] = boot.estimate(lambda w: miou(real, w) - miou(location, w)).as_dict()
    return out


def reads_content(
    val: PerImage, val_prior: PerImage, val_other: PerImage, boot: Bootstrap, min_reads: float = 0.0
) -> bool:
    """Whether a model surely reads content: it explains val pairs more than the same val
    masks fed other images' pixels, by more than `min_reads` bits/pixel (interval's low end)."""
    check_paired(val, val_prior, val_other)
    return bool(compare(val, val_other, boot).bits.low > min_reads)


def misaligned_share(
    train: PerImage,
    train_prior: PerImage,
    val: PerImage,
    val_prior: PerImage,
    val_other: PerImage,
    train_boot: Bootstrap,
    val_boot: Bootstrap,
    min_reads: float = 0.0,
) -> dict | None:
    """The share of training pairs whose mask does not belong to its image, estimated from
    one model trained on them, with a bootstrap interval (train and val images resampled
    independently, val images paired across the model's two inputs).

    A model explains the pairs it trained on at least as well as pairs it never saw. A
    training pair whose mask belongs to another image is explained as a val mask is from
    another image's pixels. So with a share s of such pairs, the content information on
    training pairs is about (1 - s) x that on val pairs + s x that on val masks fed other
    images' pixels, and s = (val - train) / (val - other). Memorised training pairs, broken
    or not, only lower the estimate: it errs towards "aligned".

    Args:
        train, train_prior: the model's and the prior's per-image scores on training pairs.
        val, val_prior: the same on val pairs; `val_other`: the model on the val masks fed
            another image's pixels (the `shuffled` input condition).

    Returns:
        `share` (an `Estimate`, a fraction), `train_content`, `val_content` and
        `other_content` (bits/pixel beyond the prior, with intervals); None when the model
        does not surely read content: the val pairs explained more than the other-image
        inputs by more than `min_reads` bits/pixel (the estimate divides by that margin).
    """
    check_paired(train, train_prior)
    if not reads_content(val, val_prior, val_other, val_boot, min_reads):
        return None

    def content(model, prior, w):
        return bits(prior, w) - bits(model, w)

    def share(wt, wv):
        on_val = content(val, val_prior, wv)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (on_val - content(train, train_prior, wt)) / (on_val - content(val_other, val_prior, wv))

    return {
        "share": val_boot.interval(float(share(None, None)), share(train_boot, val_boot)).as_dict(),
        "train_content": train_boot.estimate(lambda w: content(train, train_prior, w)).as_dict(),
        "val_content": val_boot.estimate(lambda w: content(val, val_prior, w)).as_dict(),
        "other_content": val_boot.estimate(lambda w: content(val_other, val_prior, w)).as_dict(),
        "train_images": len(train),
    }
