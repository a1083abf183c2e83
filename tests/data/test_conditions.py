"""Input conditions: derangements, re-paired images, device-made images."""

import pytest
import torch
from omegaconf import OmegaConf

from segaudit.core.config import compose, load_group_option
from segaudit.core.errors import DataError
from segaudit.data.conditions import DeviceImages, condition_samples, derangement
from segaudit.data.folder import Sample
from segaudit.runs.records import read_record
from segaudit.train.engine import train


@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_derangement_has_no_fixed_point(n):
    perm = derangement(n, seed=1)
    assert sorted(perm) == list(range(n)) and all(perm[i] != i for i in range(n))
    assert perm == derangement(n, seed=1)
    with pytest.raises(DataError):
        derangement(1, seed=0)


def _samples(n):
    return [Sample(f"s{i}", f"img{i}.png", f"mask{i}.png") for i in range(n)]


def test_shuffled_keeps_labels_and_moves_images():
    samples = _samples(5)
    out = condition_samples(samples, OmegaConf.create({"name": "shuffled", "seed": 0}), None, "train")
    assert [s.mask for s in out] == [s.mask for s in samples]
    assert all(o.image != s.image for o, s in zip(out, samples))
    assert sorted(o.image for o in out) == sorted(s.image for s in samples)


def test_cross_pairs_by_index_and_generated_by_stem(tmp_path, synth_root):
    dcfg = OmegaConf.create(
        {
            "layout": {
                "train": {"images": "images/train", "masks": "masks/train"},
                "image_suffix": ".png",
                "mask_suffix": ".png",
            }
        }
    )
    cross = condition_samples(
        _samples(3), OmegaConf.create({"name": "cross", "root": str(synth_root), "layout": None}), dcfg, "train"
    )
    assert [s.image.name for s in cross] == ["train_00000.png", "train_00001.png", "train_00002.png"]
    gen = tmp_path / "gen" / "train"
    gen.mkdir(parents=True)
    for stem in ("s0", "s1"):
        (gen / f"{stem}.jpg").write_bytes(b"")
    cond = OmegaConf.create({"name": "generated", "root": str(tmp_path / "gen"), "image_suffix": ".jpg"})
    with pytest.raises(DataError, match="1 generated image.*missing: s2.jpg"):
        condition_samples(_samples(3), cond, dcfg, "train")
    paired = condition_samples(_samples(2), cond, dcfg, "train")
    assert [s.image.name for s in paired] == ["s0.jpg", "s1.jpg"] and paired[0].mask == "mask0.png"


def test_device_images():
    images = torch.zeros(2, 3, 8, 8)
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    noise = DeviceImages(load_group_option("condition", "noise"), mean, std, torch.device("cpu"), seeded=True)
    again = DeviceImages(load_group_option("condition", "noise"), mean, std, torch.device("cpu"), seeded=True)
    a, b = noise(images), again(images)
    torch.testing.assert_close(a, b)  # seeded evaluation noise repeats
    raw = a * 0.25 + 0.5
    assert raw.min() >= 0 and raw.max() <= 1 and abs(raw.mean().item() - 0.5) < 0.05
    levels = raw * 255  # evaluation noise sits on 8-bit levels, as its PNG export does
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    blank = DeviceImages(load_group_option("condition", "blank"), mean, std, torch.device("cpu"), seeded=True)
    # 0.5 grey as an 8-bit image is 128/255, normalised: (128/255 - 0.5) / 0.25
    torch.testing.assert_close(blank(images), torch.full_like(images, (128 / 255 - 0.5) / 0.25))
    real = DeviceImages(load_group_option("condition", "real"), mean, std, torch.device("cpu"), seeded=True)
    assert real(images) is images


def test_noise_condition_never_reads_images(tiny, runs_root, synth_root, tmp_path):
    import shutil

    root = tmp_path / "labels_only"
    shutil.copytree(synth_root, root)
    for path in (root / "images").rglob("*.png"):
        path.write_bytes(b"not a png")  # any read would fail
    overrides = [o for o in tiny if not o.startswith("dataset.root")] + [f"dataset.root={root}"]
    # The data check would (rightly) report the broken images; switch it off to show that
    # training and evaluation themselves never open one.
    record = train(
        compose(
            overrides + ["train_condition=noise", "eval_condition=blank", "run_id=n", "data_check.before_train=false"]
        )
    )
    on_disk = read_record(runs_root / "n")
    assert record["status"] == "completed"
    assert (on_disk["train_condition"], on_disk["eval_condition"]) == ("noise", "blank")


def test_eval_also_records_each_condition(tiny, runs_root):
    record = train(compose(tiny + ["eval_also=[noise,shuffled]", "run_id=multi"]))
    assert set(record["metrics_by_condition"]) == {"real", "noise", "shuffled"}
    assert [h["condition"] for h in record["history"]] == ["real", "noise", "shuffled"]
    assert record["metrics"] == record["metrics_by_condition"]["real"]
