"""The framework-free content check: its prior from masks in memory is the analytic prior
of the same masks on disk, its measurements are `segaudit audit`'s, and bad batches or
settings are refused in one line."""

import math

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

import segaudit
from segaudit.core.config import compose
from segaudit.core.errors import ConfigError, DataError
from segaudit.data import build_dataset, prepare_dataset
from segaudit.integrations.content_check import (
    ContentMonitor,
    ContentRedFlags,
    check_settings,
    split_batch,
    training_flags,
)
from segaudit.measure.prior import (
    analytic_prior,
    count_masks,
    global_frequencies,
    location_log2_probabilities,
    prior_of_masks,
)

TRAIN = [[[0, 1], [2, 1]], [[0, 1], [0, 255]], [[0, 255], [2, 255]]]
VAL = [[[0, 1], [2, 2]]]


def test_counts_and_prior_of_masks_by_hand():
    counts = count_masks([np.array(m) for m in TRAIN], (2, 2), 3, 255)
    assert counts[:, 0, 0].tolist() == [3, 0, 0] and counts[:, 1, 0].tolist() == [1, 0, 2]
    prior = prior_of_masks(counts, [np.array(v) for v in VAL], 255)
    assert prior.per_pixel["iou"] == pytest.approx([100.0, 50.0, 50.0])  # as test_hand_computed_prior
    assert prior.majority_class == 0
    big = count_masks([np.kron(np.array(m), np.ones((2, 2), int)) for m in TRAIN], (2, 2), 3, 255)
    assert torch.equal(big, counts)  # each map resized to the counting grid by nearest


def test_bad_masks_are_refused():
    with pytest.raises(DataError, match="training mask 0.*outside"):
        count_masks([np.array([[0, 7]])], (1, 2), 3, 255)
    with pytest.raises(DataError, match="negative"):
        count_masks([np.array([[0, -100]])], (1, 2), 3, 255)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    settings = [f"paths.cache={cache}", "dataset.generate.n_train=48", "dataset.generate.n_val=16"]
    return settings, prepare_dataset(compose(settings).dataset, cache)


def test_the_monitor_measures_what_the_audit_measures(scenes, tmp_path):
    settings, dcfg = scenes
    val, train = build_dataset(dcfg, "val", train=False), build_dataset(dcfg, "train", train=False)
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=8, encoder_depth=3, decoder_channels=(32, 16, 8))
    batches = [{"image": val[i][0][None], "mask": val[i][1][None]} for i in range(len(val))]  # mapping batches
    monitor = ContentMonitor.from_batches(
        batches,
        (train[i][1] for i in range(len(train))),
        8,
        subset=16,
        batch_size=4,
        mean=dcfg.transform.mean,
        std=dcfg.transform.std,
    )
    found = monitor.measure(model).findings
    record = segaudit.audit_model(model, runs=tmp_path, overrides=[*settings, "train.eval_batch_size=4"])
    assert found.miou == pytest.approx(record["audit"]["miou"])
    assert found.prior_miou == pytest.approx(analytic_prior(dcfg).per_pixel["miou"])
    ours, theirs = found.evidence["information"]["content"], record["audit"]["evidence"]["information"]["content"]
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert found.red_flags == record["audit"]["red_flags"] and found.red_flags  # an untrained model is flagged
    # ... by the audit; during training it is only learning where classes sit
    result = monitor.check(model, step=3, on_flag="raise")
    assert result.state == "learning location" and result.location_part < 0.9
    assert result.flags == [] and result.held == found.red_flags
    assert model.training  # put back in the mode it was in


class LocationOnly(torch.nn.Module):
    """A model that learned where classes sit and nothing else: the analytic prior's own
    probabilities, whatever the image."""

    def __init__(self, prior):
        super().__init__()
        log2 = location_log2_probabilities(prior.counts, global_frequencies(prior.counts), prior.pseudo_count)
        self.register_buffer("logits", torch.as_tensor(log2) * math.log(2))

    def forward(self, images):
        return self.logits.expand(len(images), *self.logits.shape)


def test_a_model_that_knows_only_location_is_flagged_after_three_doublings(scenes, tmp_path):
    _, dcfg = scenes
    val, train = build_dataset(dcfg, "val", train=False), build_dataset(dcfg, "train", train=False)
    monitor = ContentMonitor.from_batches(
        [(torch.stack([val[i][0] for i in range(16)]), torch.stack([val[i][1] for i in range(16)]))],
        (train[i][1] for i in range(len(train))),
        8,
    )
    model = LocationOnly(monitor.prior)
    first = monitor.check(model, step=10, on_flag="raise")
    assert first.location_part == pytest.approx(1.0, abs=1e-4)  # the prior, exactly
    assert first.state == "no check at half this step" and first.flags == [] and len(first.held) == 3
    for step in (20, 40):  # nothing learned since: flat, but no content for under three doublings
        held = monitor.check(model, step=step, on_flag="raise")
        assert held.state == "flat" and held.rise.bits.value == pytest.approx(0.0, abs=1e-6)
        assert held.own_image_gain.high == pytest.approx(0.0, abs=1e-6)  # another image does as well
        assert held.flags == [] and len(held.held) == 3
    with pytest.raises(ContentRedFlags, match="step 80: .*no more than the analytic prior") as raised:
        monitor.check(model, step=80, on_flag="raise")  # no content at steps 10, 20, 40 and 80
    assert len(raised.value.flags) == 3 and monitor.last.held == []
    scalars = monitor.last.scalars()
    assert scalars["segaudit/red_flags"] == 3 and scalars["segaudit/location_part"] == pytest.approx(1.0, abs=1e-4)
    with pytest.warns(UserWarning, match="segaudit content check, step 160"):
        assert monitor.check(model, step=160, on_flag="stop").stop
    assert [c.step for c in monitor.curve] == [40, 80, 160]  # what later checks look back to
    check = monitor.write_record(monitor.last, runs=str(tmp_path / "runs"))["audit"]["training_check"]
    assert check["own_image_gain"]["value"] == pytest.approx(0.0, abs=1e-6) and check["rise"] is not None
    written = monitor.write_record(first, runs=str(tmp_path / "runs"))["audit"]
    assert written["red_flags"] == first.held  # the audit's flags, and where training stood
    assert written["training_check"]["state"] == "no check at half this step"
    assert written["training_check"]["flags"] == [] and written["training_check"]["held"] == first.held


KINDS = {"prior": "p", "shuffled": "s", "noise": "n"}


@pytest.mark.parametrize(
    ("kinds", "learned", "state", "doublings_since", "shortcut_before", "stalled", "counted"),
    [
        (KINDS, False, "flat", 0.0, True, True, []),  # still learning where classes sit
        (KINDS, True, "rising", 3.0, False, False, ["p", "s", "n"]),  # no content three doublings after
        (KINDS, True, "flat", 2.9, True, True, []),  # ... not yet three
        ({"noise": "n"}, True, "slow", 0.0, True, False, ["n"]),  # content shows, too slowly, twice over
        ({"noise": "n"}, True, "flat", 0.0, True, False, ["n"]),
        ({"noise": "n"}, True, "slow", 0.0, False, False, []),  # once: a pace read off noisy shares
        ({"noise": "n"}, True, "unclear", 0.0, True, False, []),  # may still be learning
        ({"prior": "p", "noise": "n"}, True, "flat", 0.0, True, True, []),  # a plateau before content shows
        # no more than the prior, the own image's small help over another's no longer growing
        ({"prior": "p", "noise": "n"}, True, "unclear", 3.0, False, True, ["p", "n"]),
        ({"prior": "p", "noise": "n"}, True, "flat", 3.0, True, False, []),  # ... growing: learning to read
        ({"prior": "p", "noise": "n"}, True, "flat", 2.0, True, True, []),  # ... under three doublings
    ],
)
def test_which_flags_count_during_training(kinds, learned, state, doublings_since, shortcut_before, stalled, counted):
    assert training_flags(kinds, learned, state, doublings_since, 3, shortcut_before, stalled) == counted


def test_bad_batches_and_settings_get_one_line():
    with pytest.raises(ConfigError, match=r"keys \['x', 'y'\]: give batch_to_pair"):
        split_batch({"x": 1, "y": 2})
    with pytest.raises(ConfigError, match="batch of type int"):
        split_batch(3)
    images, masks = torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ConfigError, match="at least 2 validation images"):
        ContentMonitor.from_batches([(images, masks)], [masks[0]], 2)
    monitor = ContentMonitor.from_batches([(images.repeat(2, 1, 1, 1), masks.repeat(2, 1, 1))], [masks[0]], 2)
    with pytest.raises(ConfigError, match="on_flag='loud'"):
        monitor.check(torch.nn.Conv2d(3, 2, 1), 1, on_flag="loud")
    one_hot = [(images.repeat(2, 1, 1, 1), torch.zeros(2, 2, 4, 4))]  # masks as class channels
    with pytest.raises(ConfigError, match=r"validation image 0 has shape \(3, 4, 4\) and its mask \(2, 4, 4\)"):
        ContentMonitor.from_batches(one_hot, [masks[0]], 2)
    with pytest.raises(ConfigError, match="ContentCheck: checking every 0 evaluations"):
        check_settings("ContentCheck", "warn", 0, 32)


@pytest.mark.parametrize(("module", "extra"), [("lightning", "lightning"), ("transformers", "hf")])
def test_without_the_extra_the_import_names_it(monkeypatch, module, extra):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    monkeypatch.setitem(sys.modules, f"{module}.pytorch", None)
    monkeypatch.delitem(sys.modules, f"segaudit.integrations.{module}", raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'segaudit\[{extra}\]'"):
        importlib.import_module(f"segaudit.integrations.{module}")


def _colour_reader(mean, std) -> torch.nn.Module:
    """Reads each pixel's class off its palette colour: the nearest colour by a 1x1 conv
    (-|x - c|^2 up to a per-pixel constant)."""
    from segaudit.data.synthetic import CLASS_COLORS

    colours = (torch.tensor(CLASS_COLORS, dtype=torch.float32) / 255 - torch.tensor(mean)) / torch.tensor(std)
    conv = torch.nn.Conv2d(3, len(CLASS_COLORS), 1)
    with torch.no_grad():
        conv.weight.copy_(2 * colours[:, :, None, None])
        conv.bias.copy_(-(colours**2).sum(1))
    return conv.eval()


def test_a_val_subset_of_several_sizes_measures_what_the_audit_measures(tmp_path):
    """Val images of three sizes, one per batch (a val loader of batch size 1): the monitor
    batches them by size, and its numbers are the audit's on the same folder. Another
    image for a mask of another size is resized to it, bilinear on the normalised tensor
    where the audit resizes the 8-bit file (PIL): the shuffled score is close, not equal."""
    from PIL import Image

    from scenes import write_folder
    from segaudit.data.synthetic import CLASS_COLORS

    root = write_folder(
        tmp_path / "mixed",
        {"train": [(64, 64)] * 4, "val": [(64, 64), (72, 48), (48, 96), (64, 64), (72, 48), (64, 64)]},
    )
    for image in (root / "images" / "val").iterdir():  # each class in its palette colour, black where ignored
        mask = np.array(Image.open(root / "masks" / "val" / image.name))
        Image.fromarray(np.array([*CLASS_COLORS, (0, 0, 0)], np.uint8)[np.minimum(mask, 8)]).save(image)
    dcfg = prepare_dataset(compose(["dataset=folder", f"dataset.root={root}"]).dataset, "/")
    val, train = build_dataset(dcfg, "val", train=False), build_dataset(dcfg, "train", train=False)
    model = _colour_reader(dcfg.transform.mean, dcfg.transform.std)
    monitor = ContentMonitor.from_batches(
        [(val[i][0][None], val[i][1][None]) for i in range(len(val))],
        (train[i][1] for i in range(len(train))),
        8,
        subset=6,
        batch_size=2,
        mean=dcfg.transform.mean,
        std=dcfg.transform.std,
    )
    assert not monitor.one_size and [b.tolist() for b in monitor.batches] == [[0, 3], [5], [1, 4], [2]]
    passes = []
    hook = model.register_forward_hook(lambda module, args, out: passes.append(len(args[0])))
    found = monitor.measure(model).findings
    hook.remove()
    # per batch real, noise and the other images; blank once per size
    assert passes == [2, 2, 1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1, 1]
    audited = segaudit.audit_model(model, "folder", root, runs=tmp_path / "runs")["audit"]
    shuffled = found.miou.pop("shuffled")
    assert found.miou == pytest.approx({k: v for k, v in audited["miou"].items() if k != "shuffled"})
    assert found.miou["real"] > 90 and found.miou["real"] - shuffled > 50  # it reads the image
    assert shuffled == pytest.approx(audited["miou"]["shuffled"], abs=1.0)
    assert found.prior_miou == pytest.approx(audited["prior_miou"])
    ours, theirs = found.evidence["information"]["content"], audited["evidence"]["information"]["content"]
    assert ours == pytest.approx(theirs, abs=1e-6)

    # a watched validation of batch size 1 gives the check its real pass at every size
    monitor.watch(model)
    with torch.inference_mode():
        for k in range(len(val)):
            model(val[k][0][None])
    shared = monitor.measure(model)
    assert shared.real_pass == "trainer"
    assert shared.findings.miou == pytest.approx({**found.miou, "shuffled": shuffled}, abs=1e-9)


def test_the_trainers_own_validation_pass_is_the_checks_real_pass(scenes):
    """`watch`: the forward passes of a validation loop (batches of 5, each after a flipped
    copy for test-time augmentation) are scored as the subset's real images, and the check
    then predicts only noise and blank; its numbers are those of a check that predicts
    everything itself, under autocast too when the validation ran under it. Passes in
    training mode, or a validation that does not reach the whole subset, leave the check
    to predict the real images."""
    _, dcfg = scenes
    val, train = build_dataset(dcfg, "val", train=False), build_dataset(dcfg, "train", train=False)
    images = torch.stack([val[i][0] for i in range(len(val))])
    masks = torch.stack([val[i][1] for i in range(len(val))])
    model = _colour_reader(dcfg.transform.mean, dcfg.transform.std)  # reads the image, and is quick

    def monitor():
        settings = {"subset": 12, "batch_size": 4, "mean": dcfg.transform.mean, "std": dcfg.transform.std}
        return ContentMonitor.from_batches([(images, masks)], (train[i][1] for i in range(len(train))), 8, **settings)

    def validate(batches=range(0, 16, 5), training=False, autocast=False):
        model.train(training)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            for start in batches:
                model(torch.flip(images[start : start + 5], [-1]))
                model(images[start : start + 5])
        model.eval()

    shared, own = monitor(), monitor()
    shared.watch(model)
    validate()
    passes = []
    counter = model.register_forward_hook(lambda module, args, out: passes.append(len(args[0])))
    got, want = shared.measure(model, step=1), own.measure(model, step=1)
    counter.remove()
    assert (got.real_pass, want.real_pass) == ("trainer", "check")
    assert shared.measure(model, step=1).real_pass == "check"  # one validation serves one check
    assert passes[:4] == [4, 1, 4, 4]  # noise per batch and one blank image; no real pass
    for name in ("real", "noise", "blank", "shuffled"):
        assert got.results[name]["miou"] == pytest.approx(want.results[name]["miou"], abs=1e-9), name
    ours, theirs = got.findings.evidence["information"], want.findings.evidence["information"]
    assert ours["content"] == pytest.approx(theirs["content"], abs=1e-6)

    # a validation under autocast: the check predicts noise and blank under it too
    shared.watch(model)
    validate(autocast=True)
    got = shared.measure(model, step=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = own.measure(model, step=2)
    assert (got.real_pass, got.autocast, want.real_pass) == ("trainer", "bfloat16", "check")
    for name in ("real", "noise", "blank", "shuffled"):
        assert got.results[name]["miou"] == pytest.approx(want.results[name]["miou"], abs=0.05), name
    assert got.findings.evidence["information"]["content"]["value"] == pytest.approx(
        want.findings.evidence["information"]["content"]["value"], abs=1e-3
    )

    for case in ({"training": True}, {"batches": [0, 5]}):
        shared.watch(model)
        validate(**case)
        assert shared.measure(model, step=3).real_pass == "check", case
    validate()  # not watched: nothing is scored for the next check
    assert shared.measure(model, step=4).real_pass == "check"
