"""segaudit.measure.metrics against scikit-learn and hand-computed cases."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, jaccard_score, recall_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from segaudit.measure.metrics import ConfusionMatrix, confusion_matrix, pair_counts, summarize

K = 6


def _random_case(seed: int):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randint(0, K, (4, 17, 23), generator=gen)
    pred = torch.randint(0, K, (4, 17, 23), generator=gen)
    target[torch.rand(target.shape, generator=gen) < 0.15] = 255  # ignore pixels
    target[target == 4] = 0  # class 4 absent from the ground truth ...
    pred[pred == 5] = 1  # ... and class 5 absent from the predictions
    target[target == 5] = 2  # so class 5 is absent from both
    return pred, target


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn(seed):
    pred, target = _random_case(seed)
    cm = confusion_matrix(pred, target, K)
    valid = target != 255
    t, p = target[valid].numpy(), pred[valid].numpy()
    np.testing.assert_array_equal(cm.numpy(), sk_confusion_matrix(t, p, labels=list(range(K))))

    result = summarize(cm)
    present = [c for c in range(K) if (t == c).any() or (p == c).any()]
    sk_iou = jaccard_score(t, p, labels=present, average=None) * 100
    np.testing.assert_allclose([result["iou"][c] for c in present], sk_iou)
    assert math.isnan(result["iou"][5])  # absent from both: undefined, left out
    assert result["iou"][4] == 0.0  # predicted, never true: counts as 0
    assert result["miou"] == pytest.approx(sk_iou.mean())
    in_gt = [c for c in range(K) if (t == c).any()]
    sk_recall = recall_score(t, p, labels=in_gt, average=None) * 100
    assert result["macc"] == pytest.approx(sk_recall.mean())
    assert result["aacc"] == pytest.approx(accuracy_score(t, p) * 100)


def test_streaming_equals_one_shot():
    pred, target = _random_case(3)
    metric = ConfusionMatrix(K)
    for i in range(pred.shape[0]):
        metric.update(pred[i], target[i])
    torch.testing.assert_close(metric.cm, confusion_matrix(pred, target, K))


def test_perfect_prediction_is_100():
    target = torch.tensor([[0, 1], [2, 255]])
    pred = torch.tensor([[0, 1], [2, 0]])  # the ignore pixel's prediction does not matter
    result = summarize(confusion_matrix(pred, target, 4))
    assert result["miou"] == 100.0 and result["macc"] == 100.0 and result["aacc"] == 100.0
    assert math.isnan(result["iou"][3])


def test_hand_computed_two_classes():
    # gt:   0 0 1 1      pred: 0 1 1 1
    # class 0: tp 1, union 2 -> 50%; class 1: tp 2, union 3 -> 66.67%
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 1, 1, 1])
    result = summarize(confusion_matrix(pred, target, 2))
    assert result["iou"] == pytest.approx([50.0, 200 / 3])
    assert result["miou"] == pytest.approx((50 + 200 / 3) / 2)
    assert result["acc"] == pytest.approx([50.0, 100.0])
    assert result["aacc"] == pytest.approx(75.0)


def test_all_ignored_gives_nan():
    result = summarize(confusion_matrix(torch.zeros(3, dtype=torch.long), torch.full((3,), 255), 3))
    assert math.isnan(result["miou"]) and math.isnan(result["aacc"])


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(torch.tensor([0.0]), torch.tensor([0]), 3)


def test_agreement_counts_labelled_pixels_only():
    from segaudit.measure.metrics import AgreementMatrix

    target = torch.tensor([[0, 1, 255, 2]])
    reference = torch.tensor([[0, 1, 1, 1]])
    pred = torch.tensor([[0, 2, 0, 1]])  # agrees on pixels 0 and 3; pixel 2 is ignore
    scores = AgreementMatrix(3, 255)
    scores.update(pred, target, reference)
    scores.update(reference, target, reference)  # a second batch in full agreement
    result = scores.compute()
    assert result["agreement"] == pytest.approx(100 * (2 + 3) / 6)
    assert result["miou"] == pytest.approx(
        summarize(confusion_matrix(torch.cat([pred, reference]), torch.cat([target, target]), 3, 255))["miou"]
    )
    assert math.isnan(AgreementMatrix(3, 255).compute()["agreement"])


def test_streaming_matrix_reports_out_of_range_ids_at_compute():
    metric = ConfusionMatrix(3, ignore_index=255)
    metric.update(torch.tensor([0, 1, 2]), torch.tensor([0, 255, 2]))  # 255 is ignore: fine
    metric.update(torch.tensor([0, 5]), torch.tensor([1, 1]))  # prediction 5 is no class
    with pytest.raises(ValueError, match="1 labelled pixel"):
        metric.compute()


def test_pair_counts_bucket_ignore_and_invalid_pixels():
    counts = pair_counts(torch.tensor([1, 0, 9, 2]), torch.tensor([1, 255, 0, -1]), 3, 255)
    assert counts.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2]  # (1,1), one ignore, two invalid
