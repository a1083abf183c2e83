"""Loss tiers on tiny hand-computed tensors."""

import math

import pytest
import torch

from segaudit.models.losses import TieredLoss


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


# --------------------------------------------------------------------------- tiers 2 and 3
from segaudit.core.config import compose  # noqa: E402
from segaudit.models.build import SegmentationWithAux, build_model  # noqa: E402
from segaudit.models.losses import sample_anchors, supervised_contrastive  # noqa: E402
from segaudit.train.engine import train  # noqa: E402


def _supcon_by_the_formula(z, y, t, t_base):
    """Loop-by-loop SupCon: l_i = -(t/t_base) mean_p log(e^{s_ip} / (e^{s_ip} + sum_n e^{s_in}))."""
    losses = []
    for i in range(len(y)):
        negatives = [math.exp(float(z[i] @ z[n]) / t) for n in range(len(y)) if y[n] != y[i]]
        terms = []
        for p in range(len(y)):
            if p != i and y[p] == y[i]:
                e = math.exp(float(z[i] @ z[p]) / t)
                terms.append(math.log(e / (e + sum(negatives))))
        if terms:
            losses.append(-(t / t_base) * sum(terms) / len(terms))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_supervised_contrastive_matches_the_formula(seed):
    gen = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(9, 5, generator=gen), dim=1)
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 0, 3])  # class 3 has no positive: left out
    got = supervised_contrastive(z, y, temperature=0.1, base_temperature=0.07).item()
    assert got == pytest.approx(_supcon_by_the_formula(z, y.tolist(), 0.1, 0.07), rel=1e-5)


def test_supervised_contrastive_prefers_separated_classes():
    apart = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert supervised_contrastive(apart, y) < supervised_contrastive(mixed, y)
    assert supervised_contrastive(apart[:2], y[:2]).item() == 0.0  # no negatives


def test_anchor_sampling_is_class_balanced_with_hard_and_easy_halves():
    labels = torch.zeros(1, 10, 10, dtype=torch.long)
    labels[0, 5:] = 1  # 50 pixels each
    labels[0, 0, 0] = 255
    preds = labels.clone().clamp(max=1)
    preds[0, :2] = 1  # 19 hard pixels of class 0 (row 0 minus the ignore pixel, row 1)
    emb = torch.randn(1, 4, 10, 10)
    feats, classes = sample_anchors(emb, labels, preds, ignore_index=255, max_samples=20, max_views=100)
    assert feats.shape == (20, 4) and sorted(classes.tolist()) == [0] * 10 + [1] * 10
    picked = [tuple(f.tolist()) for f in feats[classes == 0]]
    flat = emb[0].permute(1, 2, 0).reshape(-1, 4)
    hard = {tuple(flat[i].tolist()) for i in range(1, 20)}
    assert sum(p in hard for p in picked) == 5  # half hard, half easy
    # Class 1 has no hard pixels: easy ones fill all its views.
    assert (classes == 1).sum() == 10


def test_gradients_reach_each_head(synth_root):
    torch.manual_seed(0)
    cfg = compose(["model=unet"])
    model = build_model(cfg.model, num_classes=8, tiers=[0, 2, 3])
    assert isinstance(model, SegmentationWithAux)
    images = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 3, (2, 32, 32))
    loss = TieredLoss(tiers=[0, 2, 3], contrast_max_views=8)
    out = loss(model, images, target)
    assert set(out.terms) == {"ce", "reconstruction", "contrast"} and out.terms["contrast"] > 0
    out.total.backward()
    for head in (model.reconstruction, model.projection, model.net.encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert model(images).shape == (2, 8, 32, 32)  # evaluation sees logits only


@pytest.mark.parametrize("model_name", ["deeplabv3plus", "pspnet", "segformer", "unet"])
@pytest.mark.parametrize("loss_name", ["tier1", "tier2", "tier3"])
def test_every_model_trains_a_step_with_every_tier(model_name, loss_name, tiny, runs_root):
    record = train(
        compose(
            tiny
            + [
                f"model={model_name}",
                f"loss={loss_name}",
                "train.iters=1",
                "data_check.before_train=false",
                "train.log_every=1",
            ]
        )
    )
    assert record["status"] == "completed" and record["loss"] == loss_name
    extra = {"tier1": "consistency", "tier2": "reconstruction", "tier3": "contrast"}[loss_name]
    assert extra in record["train_log"][-1]
