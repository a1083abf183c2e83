"""Real sizes and real layouts: alignment at any scale, whole/slide/resize inference,
mixed-size splits, sizes that are not multiples of the stride, and the data-check cases
that used to end in tracebacks or silent surprises."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as F
from typer.testing import CliRunner

from expected import audit_exit, read
from scenes import write_folder
from segaudit.cli import app
from segaudit.core.config import compose
from segaudit.core.errors import ConfigError
from segaudit.data import build_dataset, eval_loader, prepare_dataset
from segaudit.data import check as check_module
from segaudit.data import transforms as transforms_module
from segaudit.data.check import alignment_probe, check_dataset
from segaudit.data.sampler import size_grouped_batches
from segaudit.measure.evaluation import evaluate, predict_labels
from segaudit.measure.metrics import ConfusionMatrix
from segaudit.measure.prior import analytic_prior
from segaudit.models.build import build_model
from segaudit.models.inference import Inference, inference_settings, model_stride, pad_to_multiple, window_origins

runner = CliRunner()
PROBE_SIZES = [(48, 48), (72, 72), (128, 128), (96, 160), (512, 1024)]


def _dataset_cfg(root, *overrides):
    return prepare_dataset(compose(["dataset=folder", f"dataset.root={root}", *overrides]).dataset, "/")


def _no_traceback(result) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


# --------------------------------------------------------------------------- alignment
@pytest.mark.parametrize("size", PROBE_SIZES)
def test_probe_passes_the_shipped_transforms_at_every_size(size):
    cfg = compose([f"dataset.transform.crop=[{size[0]},{size[1]}]", "dataset.transform.scale=[0.5,2.0]"])
    assert alignment_probe(cfg.dataset) == 100.0


def _with_bug(bug):
    """A build_transform whose pipeline is the real one followed by `bug(image, mask)`."""
    real = check_module.build_transform

    def build(tcfg, train, ignore_index):
        joint = real(tcfg, train, ignore_index)
        return lambda image, mask: bug(*joint(image, mask))

    return build


BUGS = {
    "image-only flip": lambda image, mask: (torch.flip(image, dims=[-1]), mask),
    "one-pixel shift": lambda image, mask: (torch.roll(image, shifts=1, dims=-1), mask),
    "one-pixel vertical shift": lambda image, mask: (torch.roll(image, shifts=1, dims=-2), mask),
    "transposed mask": lambda image, mask: (image, mask.transpose(-1, -2)),
}


@pytest.mark.parametrize("size", PROBE_SIZES)
@pytest.mark.parametrize("bug", list(BUGS))
def test_probe_catches_a_real_misalignment_at_every_size(size, bug, monkeypatch):
    if bug == "transposed mask" and size[0] != size[1]:
        size = (size[0], size[0])  # a transpose changes the shape of a non-square crop
    cfg = compose([f"dataset.transform.crop=[{size[0]},{size[1]}]", "dataset.transform.scale=[0.5,2.0]"])
    monkeypatch.setattr(check_module, "build_transform", _with_bug(BUGS[bug]))
    assert alignment_probe(cfg.dataset) < 90.0


@pytest.mark.parametrize("size", [(72, 72), (512, 1024)])
def test_probe_catches_legacy_nearest_mask_resampling(size, monkeypatch):
    """The cause of the 99.7-99.8% readings: masks resampled with torch's legacy
    `nearest` (floor(i * in / out)) sit up to a pixel off their bilinear image."""
    legacy = lambda inpt, size: F.resize(inpt, size=size, antialias=True)  # noqa: E731
    monkeypatch.setattr(transforms_module, "resize_pair_item", legacy)
    cfg = compose([f"dataset.transform.crop=[{size[0]},{size[1]}]", "dataset.transform.scale=[0.5,2.0]"])
    assert alignment_probe(cfg.dataset) < 90.0


def _centre_sources(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source index under each output pixel's centre, floor((i + 0.5) * in / out), in exact
    integer arithmetic; and where the centre falls exactly on a source pixel boundary."""
    twice = (2 * np.arange(n_out) + 1) * n_in
    return twice // (2 * n_out), twice % (2 * n_out) == 0


@pytest.mark.parametrize("size", [(37, 53), (90, 130), (200, 300), (1024, 2048)])
def test_mask_resampling_takes_the_pixel_under_each_centre(size):
    """Up and down, at non-integer scales, a resampled mask pixel is the source pixel
    under its centre (hand formula; at an exact boundary either neighbour is fine)."""
    from torchvision import tv_tensors

    mask = np.random.default_rng(0).integers(0, 19, (64, 96), dtype=np.uint8)
    ours = transforms_module.resize_pair_item(tv_tensors.Mask(torch.from_numpy(mask)), list(size)).numpy()
    rows, row_tie = _centre_sources(64, size[0])
    cols, col_tie = _centre_sources(96, size[1])
    exact = mask[np.ix_(rows, cols)]
    before = mask[np.ix_(rows - row_tie, cols - col_tie)]
    assert ((ours == exact) | (ours == before)).all()
    assert (ours == exact).mean() > 0.95


# --------------------------------------------------------------------------- inference
class Pointwise(nn.Module):
    """A 1x1 convolution: its logits at a pixel depend on that pixel only."""

    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape[-2:]))
        return self.conv(x)


class WindowMean(nn.Module):
    """Logits = image + the window's mean: an output that depends on the window."""

    def forward(self, x):
        return x + x.mean(dim=(-2, -1), keepdim=True)


def test_window_grid_matches_mmsegmentation_for_cityscapes():
    # ceil((1024 - 512) / 341) + 1 = 3 rows, ceil((2048 - 1024) / 683) + 1 = 3 columns,
    # the last row and column flush with the bottom and right edges.
    origins = window_origins((1024, 2048), (512, 1024), (341, 683))
    assert sorted({t for t, _ in origins}) == [0, 341, 512]
    assert sorted({left for _, left in origins}) == [0, 683, 1024]
    assert len(origins) == 9
    assert window_origins((300, 400), (512, 1024), (341, 683)) == [(0, 0)]  # smaller than a window


def test_slide_averages_overlapping_windows_by_hand():
    image = torch.arange(24, dtype=torch.float32).view(1, 1, 4, 6)
    logits = Inference("slide", multiple=1, crop=(4, 4), stride=(4, 2))(WindowMean(), image)
    left, right = image[..., :4], image[..., 2:]  # windows at columns 0-3 and 2-5
    expected = torch.empty_like(image)
    expected[..., :2] = left[..., :2] + left.mean()
    expected[..., 4:] = right[..., 2:] + right.mean()
    expected[..., 2:4] = (left[..., 2:] + left.mean() + right[..., :2] + right.mean()) / 2
    assert torch.allclose(logits, expected)


@pytest.mark.parametrize("size", [(20, 20), (33, 47), (1024, 2048), (1024, 2050)])
def test_every_mode_returns_logits_at_the_input_size(size):
    model = Pointwise()
    images = torch.rand(1, 3, *size)
    direct = model.conv(images)
    whole = Inference("whole", multiple=32)(model, images)
    assert model.shapes[-1] == (-(-size[0] // 32) * 32, -(-size[1] // 32) * 32)
    slide = Inference("slide", multiple=32, crop=(512, 1024), stride=(341, 683))(model, images)
    # a pointwise model gives the same logits whole, windowed and directly
    assert whole.shape == slide.shape == direct.shape
    assert torch.allclose(whole, direct, atol=1e-5) and torch.allclose(slide, direct, atol=1e-5)
    resized = Inference("resize", multiple=32, size=(64, 128))(model, images)
    assert resized.shape == direct.shape


@pytest.mark.parametrize("model_name,stride", [("deeplabv3plus", 16), ("pspnet", 8), ("segformer", 32), ("unet", 32)])
def test_smp_models_predict_at_sizes_that_are_not_stride_multiples(model_name, stride):
    mcfg = compose([f"model={model_name}"]).model
    model = build_model(mcfg, 5).eval()
    assert model_stride(model) == stride
    for size in [(20, 20), (72, 72), (33, 47)]:
        with torch.inference_mode():
            labels = predict_labels(model, torch.rand(2, 3, *size), torch.device("cpu"), None)
        assert labels.shape == (2, *size)


def test_inference_settings_errors_name_the_key():
    dcfg = compose(["dataset=cityscapes"]).dataset
    assert inference_settings(dcfg)["mode"] == "whole"
    slide = inference_settings(dcfg, compose(["inference.mode=slide"]).inference)
    assert slide["crop"] == (512, 1024) and slide["stride"] == (341, 683)
    resized = compose(["dataset=cityscapes", "dataset.transform.resize=[512,1024]"]).dataset
    assert inference_settings(resized) == {
        "mode": "resize",
        "crop": (512, 1024),
        "stride": (341, 683),
        "size": (512, 1024),
    }  # trained at that scale, seen at it
    with pytest.raises(ConfigError, match="inference.mode: 'tiles'"):
        inference_settings(dcfg, compose(["inference.mode=tiles"]).inference)
    with pytest.raises(ConfigError, match="inference.mode=resize needs inference.size"):
        inference_settings(dcfg, compose(["inference.mode=resize"]).inference)
    with pytest.raises(ConfigError, match="inference.crop"):
        inference_settings(dcfg, compose(["inference.mode=slide", "inference.crop=[0,5]"]).inference)


def test_bad_inference_settings_are_refused_before_a_run_exists(tiny, runs_root):
    result = runner.invoke(app, ["train", *tiny, "inference.mode=slide"])
    assert result.exit_code == 2 and "inference.mode=slide needs inference.crop" in result.stderr
    assert not runs_root.exists() or not any(runs_root.iterdir())


def test_pad_to_multiple_fills_masks_with_ignore():
    mask = torch.zeros(1, 20, 30, dtype=torch.long)
    padded = pad_to_multiple(mask, 16, 255)
    assert padded.shape == (1, 32, 32)
    assert (padded[:, 20:] == 255).all() and (padded[:, :, 30:] == 255).all() and (padded[:, :20, :30] == 0).all()


# --------------------------------------------------------------------------- mixed sizes
def test_size_grouped_batches_keep_order_and_never_mix_sizes():
    sizes = [(64, 64), (70, 50), (64, 64), (50, 90), (70, 50), (64, 64)]
    batches = size_grouped_batches(sizes, batch_size=2)
    assert batches == [[0, 2], [5], [1, 4], [3]]
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))


def test_mixed_size_evaluation_equals_one_image_at_a_time(tmp_path):
    """Batched evaluation over three sizes gives the confusion matrix of scoring each
    image alone at its native size (the reference needs no batching at all)."""
    root = write_folder(
        tmp_path / "d", {"train": [(64, 64)] * 2, "val": [(64, 64), (70, 50), (50, 90), (64, 64), (70, 50)]}
    )
    dcfg = _dataset_cfg(root)
    model = build_model(compose([]).model, 8).eval()
    dataset = build_dataset(dcfg, "val", train=False)
    batched = evaluate(model, eval_loader(dataset, 4), 8, 255, torch.device("cpu"))
    reference = ConfusionMatrix(8, 255)
    with torch.inference_mode():
        for index in range(len(dataset)):
            image, mask = dataset[index]
            assert mask.shape == Image.open(dataset.samples[index].mask).size[::-1]  # native size
            reference.update(predict_labels(model, image[None], torch.device("cpu"), None), mask[None])
    assert batched == reference.compute()


def test_train_on_200x300_jpeg_and_on_three_val_sizes(tmp_path):
    runs = tmp_path / "runs"
    jpeg = write_folder(tmp_path / "jpeg", {"train": [(200, 300)] * 4, "val": [(200, 300)] * 2}, image_ext=".jpg")
    mixed = write_folder(
        tmp_path / "mixed", {"train": [(64, 64)] * 3 + [(70, 50)], "val": [(64, 64), (70, 50), (50, 90)]}
    )
    for root, extra in ((jpeg, ["dataset.layout.image_suffix=.jpg"]), (mixed, [])):
        result = runner.invoke(
            app,
            [
                "train",
                "dataset=folder",
                f"dataset.root={root}",
                "train.iters=3",
                "train.batch_size=2",
                "train.progress=false",
                f"paths.runs={runs}",
                f"run_id={root.name}",
                *extra,
            ],
        )
        assert result.exit_code == 0, result.output
        record = json.loads((runs / root.name / "record.json").read_text())
        assert record["status"] == "completed" and record["inference"]["mode"] == "whole"
        assert np.isfinite(record["metrics"]["aacc"])
    audit = runner.invoke(app, ["audit", "model", "mixed", f"paths.runs={runs}", "run_id=mixed-audit"])
    audited = read(runs, "mixed-audit")
    assert audit.exit_code == audit_exit(audited), audit.output
    trained = json.loads((runs / "mixed" / "record.json").read_text())
    assert audited["audit"]["miou"]["real"] == pytest.approx(trained["metrics"]["miou"], nan_ok=True)


def test_training_crops_that_are_not_stride_multiples(tmp_path):
    root = write_folder(tmp_path / "d", {"train": [(72, 72)] * 3, "val": [(72, 72), (20, 20)]})
    for model_name in ("deeplabv3plus", "pspnet"):
        result = runner.invoke(
            app,
            [
                "train",
                "dataset=folder",
                f"dataset.root={root}",
                f"model={model_name}",
                "dataset.transform.crop=[40,56]",
                "train.iters=2",
                "train.batch_size=2",
                "train.progress=false",
                f"paths.runs={tmp_path / 'runs'}",
            ],
        )
        assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- data check
def _layout_case(tmp_path, case):
    root = write_folder(tmp_path / case, {"train": [(32, 32)] * 3, "val": [(32, 32)] * 2})
    for split in ("train", "val"):
        images, masks = root / "images" / split, root / "masks" / split
        if case == "mask-suffix":
            for path in masks.glob("*.png"):
                path.rename(path.with_name(path.stem + "_mask.png"))
        else:  # images nested in a city folder, masks flat
            (images / "cityA").mkdir()
            for path in images.glob("*.png"):
                path.rename(images / "cityA" / path.name)
    return root


@pytest.mark.parametrize(
    "case,hint", [("mask-suffix", "dataset.layout.mask_suffix=_mask.png"), ("nested", "sub-folders differ")]
)
@pytest.mark.parametrize("command", [["data", "check"], ["prior"], ["train"]])
def test_zero_pairs_name_the_orphans_not_a_traceback(tmp_path, case, hint, command):
    root = _layout_case(tmp_path, case)
    runs = tmp_path / "runs"
    result = runner.invoke(app, [*command, "dataset=folder", f"dataset.root={root}", f"paths.runs={runs}"])
    _no_traceback(result)
    assert result.exit_code == 2
    assert hint in result.stderr and "0000" in result.stderr
    assert not runs.exists() or not any(runs.iterdir())


def test_symlinked_sub_folders_are_followed_and_loops_stopped(tmp_path):
    elsewhere = write_folder(tmp_path / "elsewhere", {"train": [(32, 32)] * 2, "val": [(32, 32)]})
    root = write_folder(tmp_path / "d", {"train": [(32, 32)] * 3, "val": [(32, 32)]})
    for kind in ("images", "masks"):
        os.symlink(elsewhere / kind / "train", root / kind / "train" / "cityB")
    os.symlink(root / "images" / "train", root / "images" / "train" / "loop")  # a cycle
    report = check_dataset(_dataset_cfg(root))
    train = next(s for s in report.summaries if s.split == "train")
    assert train.pairs == 5 and not report.errors


def test_ignore_index_comes_from_dataset_yaml_unless_overridden(tmp_path):
    root = write_folder(tmp_path / "d", {"train": [(32, 32)] * 2, "val": [(32, 32)]})
    (root / "dataset.yaml").write_text("num_classes: 8\nignore_index: 7\n")
    assert int(_dataset_cfg(root).ignore_index) == 7
    assert int(_dataset_cfg(root, "dataset.ignore_index=255").ignore_index) == 255
    (root / "dataset.yaml").write_text("num_classes: 8\n")
    assert int(_dataset_cfg(root).ignore_index) == 255
    (root / "dataset.yaml").write_text("num_classes: 8\nignore_index: 300\n")
    result = runner.invoke(app, ["data", "check", "dataset=folder", f"dataset.root={root}"])
    assert result.exit_code == 2 and "dataset.ignore_index: 300" in result.stderr


def test_an_all_ignore_dataset_is_refused_before_a_run_exists(tmp_path):
    root = write_folder(tmp_path / "d", {"train": [(32, 32)] * 2, "val": [(32, 32)]})
    for path in (root / "masks").rglob("*.png"):
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(path)
    checked = runner.invoke(app, ["data", "check", "dataset=folder", f"dataset.root={root}"])
    assert checked.exit_code == 2
    assert "every pixel is ignore (255): nothing to learn from" in checked.stderr
    assert "nothing to score" in checked.stderr
    trained = runner.invoke(app, ["train", "dataset=folder", f"dataset.root={root}", f"paths.runs={tmp_path / 'runs'}"])
    assert trained.exit_code == 2 and not (tmp_path / "runs").exists()


def test_mixed_sizes_are_information_not_errors(tmp_path):
    root = write_folder(tmp_path / "d", {"train": [(32, 32)] * 2, "val": [(32, 32), (40, 24), (24, 40)]})
    report = check_dataset(_dataset_cfg(root))
    assert not report.errors
    info = [p for p in report.problems if p.level == "info"]
    assert len(info) == 1 and "3 sizes" in info[0].message and info[0].split == "val"
    # Training batches need one size: mixed training sizes without a crop are an error.
    mixed_train = write_folder(tmp_path / "t", {"train": [(32, 32), (40, 24)], "val": [(32, 32)]})
    report = check_dataset(_dataset_cfg(mixed_train, "dataset.transform.crop=null"))
    assert [p.path for p in report.errors] == ["dataset.transform.crop"]
    assert not check_dataset(_dataset_cfg(mixed_train)).errors  # crop: auto


def test_cityscapes_at_full_size_checks_and_priors(cityscapes_root):
    dcfg = prepare_dataset(compose(["dataset=cityscapes", f"dataset.root={cityscapes_root}"]).dataset, "/")
    assert list(dcfg.transform.crop) == [512, 512]  # auto: min(H, 512) x min(W, 512)
    report = check_dataset(dcfg)
    assert not report.errors and report.alignment == 100.0
    assert {s.sizes_text for s in report.summaries} == {"2048x1024"}
    prior = analytic_prior(dcfg)
    assert prior.size == (1024, 2048) and tuple(prior.counts.shape) == (19, 1024, 2048)
    assert prior.counts.sum() == sum(s.labelled_pixels for s in report.summaries if s.split == "train")


def test_data_synth_writes_a_cityscapes_layout_the_preset_reads(tmp_path):
    out = tmp_path / "cs"
    made = runner.invoke(
        app, ["data", "synth", "--out", str(out), "--layout", "cityscapes", "--n-train", "1", "--n-val", "1"]
    )
    assert made.exit_code == 0, made.output
    labels = next((out / "gtFine" / "train").rglob("*_gtFine_labelIds.png"))
    assert Image.open(labels).size == (2048, 1024)
    checked = runner.invoke(app, ["data", "check", "dataset=cityscapes", f"dataset.root={out}"])
    assert checked.exit_code == 0 and "2048x1024" in checked.stdout, checked.output
    refused = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "x"), "--layout", "voc"])
    assert refused.exit_code == 2 and "--layout voc" in refused.stderr


def test_pair_matching_thumbnails_stay_small_at_cityscapes_size():
    from segaudit.diagnostics.suspects import PairScore, best_matches, thumb_size

    height, width = thumb_size((1024, 2048))
    assert height * width <= 4096 and abs(width / height - 2) < 0.05
    # Three masks at that size; masks 0 and 1 are each other's image's, mask 2 is its own.
    rng = np.random.default_rng(0)
    preds = torch.from_numpy(rng.integers(0, 19, size=(3, height, width)))
    masks = preds[[1, 0, 2]].clone()
    masks[:, :2] = 255  # ignore rows count nowhere
    scores = [PairScore(f"city/{i}", "train", -1.0, 0.0, 0.0, flagged=i < 2) for i in range(3)]
    best_matches(scores, preds, masks, 255, margin=10.0)
    assert [s.best_match for s in scores] == ["city/1", "city/0", None]
    assert scores[0].best_fit == pytest.approx(100.0)
