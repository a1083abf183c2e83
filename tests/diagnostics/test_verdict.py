"""Content's pace along a training curve, by hand."""

import math

import pytest

from segaudit.diagnostics.verdict import share_decelerating, share_paces


def test_share_paces_per_doubling_by_hand():
    shares = {100: 0.1, 200: 0.3, 400: 0.4, 800: 0.45, 300: 0.9}  # 300 is not on the doubling path to 800
    assert share_paces(shares, 800) == pytest.approx([0.1, 0.05])  # 200 -> 400 -> 800; three points at most
    assert share_paces(shares, 400) == pytest.approx([0.2, 0.1])
    assert share_decelerating(shares, 800) and share_decelerating(shares, 400)
    # the last check at or before half the step
    assert share_paces({30: 0.1, 100: 0.4}, 100) == pytest.approx([0.3 / math.log2(100 / 30)])
    assert share_paces(shares, 500) == []  # no check at that step


def test_a_curve_from_step_zero_has_no_pace_before_it():
    assert share_paces({0: 0.2}, 0) == []  # the check at step 0 is its own half: no doubling
    assert share_paces({0: 0.2, 1: 0.3}, 1) == []  # log2(1/0) is no pace either
    assert not share_decelerating({0: 0.2, 25: 0.3, 50: 0.35}, 50)
