"""Per-image log-likelihood and class counts (segaudit.measure.information) against hand
computations, scikit-learn and the dataset-level metrics; the archive round trip."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from segaudit.measure.information import ImageScores, PerImage, load_per_image, save_per_image
from segaudit.measure.metrics import ConfusionMatrix

K = 4


def _case(seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, K, 5, 7, generator=gen) * 3
    target = torch.randint(0, K, (3, 5, 7), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.2] = 255
    return logits, target


def test_nll_is_minus_log2_softmax_at_the_label_and_skips_ignore():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # 1 image, K=2, 1x2 pixels
    target = torch.tensor([[[0, 255]]])
    scores = ImageScores(2, 255, 1)
    scores.update(torch.tensor([0]), logits, target)
    got = scores.compute()
    by_hand = -math.log2(math.exp(2) / (math.exp(2) + math.exp(0)))  # only the labelled pixel
    assert got.nll[0] == pytest.approx(by_hand)
    assert got.pixels.tolist() == [1]
    assert got.tp.tolist() == [[1, 0]] and got.gt.tolist() == [[1, 0]] and got.pred.tolist() == [[1, 0]]


@pytest.mark.parametrize("seed", [0, 1])
def test_per_image_counts_match_sklearn_and_the_confusion_matrix(seed):
    logits, target = _case(seed)
    scores = ImageScores(K, 255, 5)
    order = torch.tensor([4, 0, 2])  # images land at their dataset positions, in any order
    scores.update(order, logits, target)
    got = scores.compute()
    assert got.pixels[[1, 3]].tolist() == [0, 0]  # positions never scored stay empty
    pred = logits.argmax(1)
    for row, image in zip(order.tolist(), range(3)):
        valid = target[image] != 255
        cm = sk_confusion_matrix(target[image][valid], pred[image][valid], labels=list(range(K)))
        np.testing.assert_array_equal(got.tp[row], np.diag(cm))
        np.testing.assert_array_equal(got.gt[row], cm.sum(1))
        np.testing.assert_array_equal(got.pred[row], cm.sum(0))
        logp = torch.log_softmax(logits[image], 0) / math.log(2)
        expected = -logp.gather(0, target[image].clamp(max=K - 1)[None])[0][valid].sum()
        assert got.nll[row] == pytest.approx(float(expected), rel=1e-6)
    metric = ConfusionMatrix(K, 255)
    metric.update(pred, target)
    np.testing.assert_allclose(got.iou(), metric.compute()["iou"], equal_nan=True)
    assert got.miou() == pytest.approx(metric.compute()["miou"])


def test_archive_round_trip_and_no_pickle(tmp_path):
    logits, target = _case(2)
    scores = ImageScores(K, 255, 3)
    scores.update(torch.arange(3), logits, target)
    first = scores.compute()
    save_per_image(tmp_path / "p.npz", {"10/real": first, "20/noise": first}, ["a", "b", "c"])
    entries, stems = load_per_image(tmp_path / "p.npz")
    assert stems == ["a", "b", "c"] and sorted(entries) == ["10/real", "20/noise"]
    np.testing.assert_array_equal(entries["10/real"].tp, first.tp)
    np.save(tmp_path / "evil.npy", np.array([object()], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "evil.npz", stems=np.array([object()], dtype=object))
    with pytest.raises(ValueError):
        load_per_image(tmp_path / "evil.npz")


def test_bits_per_pixel_pools_pixels_not_images():
    scores = PerImage(
        nll=np.array([10.0, 1.0]),
        pixels=np.array([10, 1]),
        tp=np.zeros((2, 1)),
        gt=np.zeros((2, 1)),
        pred=np.zeros((2, 1)),
    )
    assert scores.bits_per_pixel == pytest.approx(11 / 11)
