"""Loss tiers on tiny hand-computed tensors."""

import math

import pytest
import torch

from segaudit.losses import TieredLoss


def test_consistency_is_zero_for_identical_predictions():
    loss = TieredLoss(tiers=[0, 1])
    logits = torch.randn(2, 4, 3, 3)
    target = torch.randint(0, 4, (2, 3, 3))
    assert loss.consistency(logits, logits.clone(), target).item() == pytest.approx(0.0, abs=1e-7)


def test_consistency_hand_computed_two_pixels():
    # Pixel 1: p = (0.5, 0.5), q = (0.8, 0.2): KL = 0.5 ln(0.5/0.8) + 0.5 ln(0.5/0.2)
    # Pixel 2 is ignore and must not count.
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).log().T.reshape(1, 2, 1, 2)
    q = torch.tensor([[0.8, 0.2], [0.1, 0.9]]).log().T.reshape(1, 2, 1, 2)
    target = torch.tensor([[[1, 255]]])
    expected = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert TieredLoss(tiers=[0, 1]).consistency(p, q, target).item() == pytest.approx(expected, rel=1e-5)
    # Same as torch's kl_div(log q, p) summed over classes for the valid pixel.
    ref = torch.nn.functional.kl_div(q[..., 0], p[..., 0].exp(), reduction="sum")
    assert ref.item() == pytest.approx(expected, rel=1e-5)


class _Pixelwise(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


def test_tier1_adds_a_weighted_term_and_gradients_flow():
    torch.manual_seed(0)
    model = _Pixelwise()
    images, target = torch.randn(2, 3, 4, 4), torch.randint(0, 4, (2, 4, 4))
    tier0 = TieredLoss(tiers=[0])(model, images, target)
    out = TieredLoss(tiers=[0, 1], consistency_weight=0.1, consistency_sigma=0.5)(model, images, target)
    assert set(out.terms) == {"ce", "consistency"} and out.terms["consistency"] > 0
    assert out.total.item() == pytest.approx((tier0.total + out.terms["consistency"]).item(), rel=1e-5)
    out.total.backward()
    assert model.conv.weight.grad.abs().sum() > 0


def test_constant_model_is_perfectly_consistent():
    """What tier 1 cannot do: a model that ignores its input pays no consistency cost."""

    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.randn(1, 4, 4, 4))

        def forward(self, x):
            return self.bias.expand(x.shape[0], -1, -1, -1)

    out = TieredLoss(tiers=[0, 1])(Constant(), torch.randn(2, 3, 4, 4), torch.randint(0, 4, (2, 4, 4)))
    assert out.terms["consistency"].item() == pytest.approx(0.0, abs=1e-7)
