"""Bootstrap intervals that cover what they claim (checked by simulation with a known
truth), the information decomposition by hand, paired comparisons."""

import math

import numpy as np
import pytest

from segaudit.measure.evidence import (
    Bootstrap,
    Estimate,
    bits,
    compare,
    information,
    miou,
    misaligned_share,
    reads_content,
)
from segaudit.measure.information import PerImage

K = 3


def _scores(nll, pixels, tp, gt, pred) -> PerImage:
    return PerImage(
        nll=np.asarray(nll, float),
        pixels=np.asarray(pixels),
        tp=np.asarray(tp),
        gt=np.asarray(gt),
        pred=np.asarray(pred),
    )


def _with_bits(per_pixel: np.ndarray, pixels: np.ndarray, counts: PerImage | None = None) -> PerImage:
    n = len(pixels)
    zeros = np.zeros((n, K), int)
    base = counts or _scores(np.zeros(n), pixels, zeros, zeros, zeros)
    return _scores(per_pixel * pixels, pixels, base.tp, base.gt, base.pred)


def test_paired_bits_interval_covers_the_true_difference():
    """95% intervals of a paired difference in bits/pixel contain the true difference in
    about 95% of repeated experiments (400 experiments of 80 images)."""
    rng = np.random.default_rng(0)
    truth, hits, runs = 0.05, 0, 400
    for _ in range(runs):
        pixels = np.full(80, 1000)
        image_effect = rng.normal(1.5, 0.4, 80)  # images differ a lot, the models less
        a = _with_bits(image_effect, pixels)
        b = _with_bits(image_effect + rng.normal(truth, 0.1, 80), pixels)
        estimate = compare(a, b, Bootstrap(80, draws=1000, seed=int(rng.integers(1 << 30)))).bits
        hits += estimate.low <= truth <= estimate.high
    assert 0.91 <= hits / runs <= 0.98, hits / runs


def _population_counts(rng, n, skill):
    """Per-image class counts of a predictor that gets each labelled pixel right with
    probability `skill` (a wrong pixel goes to another class)."""
    gt = rng.multinomial(400, [0.6, 0.3, 0.1], size=n)
    tp = rng.binomial(gt, skill)
    wrong = gt - tp
    pred = tp + np.roll(wrong, 1, axis=1)  # the misses land on the next class
    return tp, gt, pred


def test_miou_interval_covers_the_population_miou():
    """Resampling images (their confusion matrices) gives mIoU intervals that cover the
    mIoU of the whole population of images they were drawn from."""
    rng = np.random.default_rng(1)
    tp, gt, pred = _population_counts(rng, 20000, 0.7)
    population = _scores(np.zeros(20000), gt.sum(1), tp, gt, pred)
    truth = miou(population)
    hits, runs = 0, 300
    for _ in range(runs):
        pick = rng.choice(20000, 60, replace=False)
        sample = _scores(np.zeros(60), gt[pick].sum(1), tp[pick], gt[pick], pred[pick])
        estimate = Bootstrap(60, draws=1000, seed=int(rng.integers(1 << 30))).estimate(
            lambda w, sample=sample: miou(sample, w)
        )
        hits += estimate.low <= truth <= estimate.high
    assert 0.88 <= hits / runs <= 0.99, hits / runs


def test_information_decomposition_by_hand():
    pixels = np.array([100, 300])
    # global 2.0 and 1.0 bits/pixel -> pooled (200 + 300) / 400 = 1.25
    glob = _with_bits(np.array([2.0, 1.0]), pixels)
    location = _with_bits(np.array([1.0, 0.5]), pixels)  # pooled 250 / 400 = 0.625
    model = _with_bits(np.array([0.5, 0.5]), pixels)  # pooled 0.5
    result = information(model, location, glob, Bootstrap(2, draws=50))
    assert result.entropy.value == pytest.approx(1.25)
    assert result.location.value == pytest.approx(0.625)
    assert result.content.value == pytest.approx(0.125)
    assert result.remaining.value == pytest.approx(0.5)
    assert result.content_share.value == pytest.approx(0.125 / 0.75)
    assert result.location.value + result.content.value + result.remaining.value == pytest.approx(1.25)


def test_compare_refuses_different_images():
    a = _with_bits(np.ones(3), np.array([1, 2, 3]))
    b = _with_bits(np.ones(3), np.array([1, 2, 4]))
    with pytest.raises(ValueError, match="not of the same images"):
        compare(a, b, Bootstrap(3, draws=10))


def test_miou_leaves_out_classes_absent_everywhere_per_resample():
    # class 2 appears in image 1 only: resamples without image 1 average over 2 classes
    tp = np.array([[5, 5, 0], [0, 0, 4]])
    gt = np.array([[5, 5, 0], [0, 0, 8]])
    pred = tp
    scores = _scores([0, 0], gt.sum(1), tp, gt, pred)
    assert miou(scores) == pytest.approx((100 + 100 + 50) / 3)
    weights = np.array([[2.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(miou(scores, weights), [100.0, 50.0])


def test_bootstrap_sums_each_array_once_and_per_array():
    """Resampled sums are kept per array: the same array gives the same sums, an equal-shaped
    array with other values gets its own (a stale hit would pair a model with another's)."""
    boot = Bootstrap(4, draws=30, seed=3)
    a = np.arange(8.0).reshape(4, 2)
    b = a[::-1].copy()
    first = boot.sums(a)
    assert boot.sums(a) is first
    np.testing.assert_allclose(first, boot.weights @ a)
    np.testing.assert_allclose(boot.sums(b), boot.weights @ b)
    scores = _with_bits(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 2, 3, 4]))
    np.testing.assert_allclose(bits(scores, boot), bits(scores, boot.weights))


def test_estimate_text_and_dict_round_trip():
    estimate = Estimate(0.19, 0.15, 0.23)
    assert estimate.above_zero and Estimate.from_dict(estimate.as_dict()) == estimate
    assert estimate.text() == "+0.19 [+0.15, +0.23]"
    assert not Estimate(0.1, -0.01, 0.2).above_zero
    assert math.isnan(Bootstrap(2, draws=5).estimate(lambda w: math.nan if w is None else np.ones(5)).low)


def test_bits_pools_over_resampled_images():
    scores = _with_bits(np.array([1.0, 3.0]), np.array([1, 3]))
    assert bits(scores) == pytest.approx((1 + 9) / 4)
    np.testing.assert_allclose(bits(scores, np.array([[2.0, 0.0], [0.0, 2.0]])), [1.0, 3.0])


def _content(per_pixel_gain: np.ndarray, prior_bits: float = 2.0) -> tuple[PerImage, PerImage]:
    """A model and the prior on the same images, the model `per_pixel_gain` bits/pixel better."""
    pixels = np.full(len(per_pixel_gain), 1000)
    return _with_bits(prior_bits - per_pixel_gain, pixels), _with_bits(np.full(len(pixels), prior_bits), pixels)


@pytest.mark.parametrize("broken", [0.0, 0.1, 0.3, 0.6])
def test_misaligned_share_recovers_a_known_mixture(broken):
    """Training pairs: a share `broken` explained as val masks fed another image's pixels
    (-0.3 bits/pixel), the rest as val pairs (+0.5); the estimate's interval holds the truth."""
    rng = np.random.default_rng(1)
    n_train, n_val = 300, 200
    own = rng.normal(0.5, 0.15, n_train)
    mixed = np.where(np.arange(n_train) < round(broken * n_train), rng.normal(-0.3, 0.15, n_train), own)
    train, train_prior = _content(mixed)
    val_gain = rng.normal(0.5, 0.15, n_val)
    val, val_prior = _content(val_gain)
    other, _ = _content(val_gain - 0.8 + rng.normal(0, 0.05, n_val))
    found = misaligned_share(
        train, train_prior, val, val_prior, other, Bootstrap(n_train, draws=1000, seed=1), Bootstrap(n_val, draws=1000)
    )
    share = Estimate.from_dict(found["share"])
    assert share.low <= broken <= share.high, share
    assert abs(share.value - broken) < 0.06 and share.high - share.low < 0.15
    assert found["train_images"] == n_train
    assert found["other_content"]["value"] == pytest.approx(float(val_gain.mean()) - 0.8, abs=0.01)


def test_misaligned_share_needs_a_model_that_reads_content():
    """Val masks fed other images' pixels explained as well as their own: no estimate."""
    rng = np.random.default_rng(2)
    gains = rng.normal(0.0, 0.05, 100)
    val, val_prior = _content(gains)
    train, train_prior = _content(rng.normal(0.0, 0.05, 100))
    assert misaligned_share(train, train_prior, val, val_prior, val, Bootstrap(100, seed=1), Bootstrap(100)) is None
    # ... and a margin too thin to divide by (0.01 bits/pixel, under min_reads) gives none either.
    other, _ = _content(gains - 0.01)
    assert (
        misaligned_share(
            train, train_prior, val, val_prior, other, Bootstrap(100, seed=1), Bootstrap(100), min_reads=0.03
        )
        is None
    )
    assert (
        misaligned_share(train, train_prior, val, val_prior, other, Bootstrap(100, seed=1), Bootstrap(100)) is not None
    )
    # The same test alone, run before the (expensive) training pairs are scored.
    boot = Bootstrap(100)
    assert not reads_content(val, val_prior, val, boot) and not reads_content(val, val_prior, other, boot, 0.03)
    assert reads_content(val, val_prior, other, boot)
