"""Models segaudit did not train: exported copies of one model must audit the same."""

import json
import pickle
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.export import Dim
from typer.testing import CliRunner

from segaudit.checkpoints import load_checkpoint, load_trained_model
from segaudit.cli import app
from segaudit.config import compose
from segaudit.engine import train

runner = CliRunner()

FACTORY = """
import segmentation_models_pytorch as smp
import torch
from torch import nn


def build():
    return smp.Unet("resnet18", encoder_weights=None, classes=8)


class Bgr255(nn.Module):
    '''Takes BGR images in 0..255, as an OpenCV-based pipeline feeds them.'''

    def __init__(self):
        super().__init__()
        self.net = build()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x):
        return self.net((x.flip(1) / 255 - self.mean) / self.std)


def build_bgr255():
    return Bgr255()
"""


@pytest.fixture(scope="module")
def native(tmp_path_factory, synth_root):
    """A tiny trained U-Net, its native audit, and the overrides that reach its data."""
    base = tmp_path_factory.mktemp("sources")
    runs_root = base / "runs"
    tiny = ["dataset=folder", f"dataset.root={synth_root}", "dataset.transform.crop=[32,32]",
            "dataset.cache_in_memory=true", "train.iters=6", "train.batch_size=4",
            "train.eval_batch_size=8", "train.progress=false", f"paths.runs={runs_root}",
            f"paths.cache={base / 'cache'}"]
    train(compose(tiny + ["model=unet", "run_id=native"]))
    done = runner.invoke(app, ["audit", "native", *tiny, "run_id=native-audit"])
    assert done.exit_code == 0, done.output
    record = json.loads((runs_root / "native-audit" / "record.json").read_text())
    ckpt = load_checkpoint(runs_root / "native" / "checkpoint.pt")
    model, _ = load_trained_model(ckpt, runs_root / "native" / "checkpoint.pt")
    (base / "pkg").mkdir()
    (base / "pkg" / "segaudit_test_factory.py").write_text(textwrap.dedent(FACTORY))
    return {"tiny": tiny, "runs": runs_root, "base": base, "model": model.eval(),
            "miou": record["audit"]["miou"]}


def _audit(native, source, *extra, monkeypatch=None):
    run_id = f"audit-{abs(hash((str(source), extra)))}"
    done = runner.invoke(app, ["audit", str(source), *native["tiny"], f"run_id={run_id}", *extra])
    assert done.exit_code == 0, done.output
    record = json.loads((native["runs"] / run_id / "record.json").read_text())
    return record


def _same(measured: dict, expected: dict, tol: float) -> None:
    for condition, value in expected.items():
        assert measured[condition] == pytest.approx(value, abs=tol), condition


def test_smp_save_pretrained_folder_audits_like_the_original(native):
    folder = native["base"] / "smp-dir"
    native["model"].save_pretrained(folder)  # what a plain smp script writes
    record = _audit(native, folder, "--plots", str(native["base"] / "plots"))
    _same(record["audit"]["miou"], native["miou"], 0.01)
    assert record["model"] == "external-smp" and record["phase"] == "audit"
    assert (native["base"] / "plots" / f"samples_{record['run_id']}.png").is_file()
    listed = runner.invoke(app, ["report", f"paths.runs={native['runs']}", "--format", "json"])
    assert record["run_id"] in [row["run_id"] for row in json.loads(listed.stdout)]


def test_factory_with_prefixed_safetensors_weights(native, monkeypatch):
    monkeypatch.syspath_prepend(str(native["base"] / "pkg"))
    weights = native["base"] / "ddp-weights.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in native["model"].state_dict().items()}, weights)
    record = _audit(native, weights, "--factory", "segaudit_test_factory:build")
    _same(record["audit"]["miou"], native["miou"], 0.01)


def test_torchscript_and_pt2_need_trust_then_audit_the_same(native):
    example = torch.zeros(2, 3, 32, 32)
    scripted = native["base"] / "model.ts"
    torch.jit.save(torch.jit.trace(native["model"], example), scripted)
    program = native["base"] / "model.pt2"
    torch.export.save(torch.export.export(native["model"], (example,),
                                          dynamic_shapes=({0: Dim("batch", min=1, max=64)},)), program)
    for path in (scripted, program):
        refused = runner.invoke(app, ["audit", str(path), *native["tiny"]])
        assert refused.exit_code == 2 and "--trust-model" in refused.stderr, refused.output
        record = _audit(native, path, "--trust-model")
        _same(record["audit"]["miou"], native["miou"], 0.01)


def test_a_bgr_255_model_needs_its_card(native, monkeypatch):
    monkeypatch.syspath_prepend(str(native["base"] / "pkg"))
    import segaudit_test_factory as factory

    wrapped = factory.Bgr255()
    wrapped.net.load_state_dict(native["model"].state_dict())
    weights = native["base"] / "bgr.safetensors"
    save_file({k: v.contiguous() for k, v in wrapped.state_dict().items()}, weights)
    no_card = _audit(native, weights, "--factory", "segaudit_test_factory:build_bgr255")
    assert no_card["audit"]["miou"]["real"] != pytest.approx(native["miou"]["real"], abs=0.5)
    (native["base"] / "bgr.safetensors.card.yaml").write_text(
        "channels: bgr\ninput_range: 255\nmean: [0, 0, 0]\nstd: [1, 1, 1]\n")
    with_card = _audit(native, weights, "--factory", "segaudit_test_factory:build_bgr255", "seed=1")
    _same(with_card["audit"]["miou"], native["miou"], 0.01)
    overrides = _audit(native, native["base"] / "bgr.safetensors", "--factory",
                       "segaudit_test_factory:build_bgr255", "card.channels=rgb", "seed=2")
    assert overrides["audit"]["miou"]["real"] != pytest.approx(native["miou"]["real"], abs=0.5)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "owned"))


def test_hostile_pickles_never_run(native, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(native["base"] / "pkg"))
    marker = tmp_path / "marker"
    as_checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "config": _Payload(marker)}, as_checkpoint)
    as_state_dict = tmp_path / "weights.pt"
    torch.save({"encoder.conv1.weight": _Payload(marker)}, as_state_dict)
    as_model = tmp_path / "model.pt"
    with open(as_model, "wb") as fh:
        pickle.dump(_Payload(marker), fh)
    for path, extra in ((as_checkpoint, []), (as_state_dict, ["--factory", "segaudit_test_factory:build"]),
                        (as_model, [])):
        done = runner.invoke(app, ["audit", str(path), *native["tiny"], *extra])
        assert done.exit_code == 2, done.output
        assert len(done.stderr.strip().splitlines()) == 1 and str(path) in done.stderr
    assert not marker.exists()


def test_weights_without_a_factory_and_a_wrong_class_count_are_one_line(native, monkeypatch):
    monkeypatch.syspath_prepend(str(native["base"] / "pkg"))
    weights = native["base"] / "plain.pt"
    torch.save(native["model"].state_dict(), weights)
    done = runner.invoke(app, ["audit", str(weights), *native["tiny"]])
    assert done.exit_code == 2 and "give --factory" in done.stderr, done.output
    (native["base"] / "pkg" / "segaudit_test_five.py").write_text(
        "import segmentation_models_pytorch as smp\n"
        "def build():\n    return smp.Unet('resnet18', encoder_weights=None, classes=5)\n")
    five = smp_five_weights(native["base"])
    done = runner.invoke(app, ["audit", str(five), *native["tiny"], "--factory", "segaudit_test_five:build"])
    assert done.exit_code == 2 and "expected (N, 8, H, W)" in done.stderr, done.output


def smp_five_weights(base: Path) -> Path:
    import segmentation_models_pytorch as smp

    path = base / "five.safetensors"
    save_file({k: v.contiguous() for k, v in
               smp.Unet("resnet18", encoder_weights=None, classes=5).state_dict().items()}, path)
    return path


def test_onnx_audits_like_the_original_and_its_metadata_fills_the_card(native):
    import onnx

    path = native["base"] / "model.onnx"
    batch, height, width = Dim("batch", min=1, max=64), Dim("h", min=32, max=2048), Dim("w", min=32, max=2048)
    torch.onnx.export(native["model"], (torch.zeros(2, 3, 32, 32),), str(path), dynamo=True,
                      dynamic_shapes=({0: batch, 2: height, 3: width},))
    record = _audit(native, path)
    _same(record["audit"]["miou"], native["miou"], 0.1)
    assert record["model"] == "external-onnx"
    # The same graph stamped "expects BGR": the metadata is read, and a card override wins.
    stamped = onnx.load(str(path))
    onnx.helper.set_model_props(stamped, {"channels": '"bgr"'})
    onnx.save(stamped, str(native["base"] / "bgr-meta.onnx"))
    misread = _audit(native, native["base"] / "bgr-meta.onnx")
    assert misread["audit"]["miou"]["real"] != pytest.approx(native["miou"]["real"], abs=0.5)
    fixed = _audit(native, native["base"] / "bgr-meta.onnx", "card.channels=rgb")
    _same(fixed["audit"]["miou"], native["miou"], 0.1)


TORCHVISION_FACTORY = """
from torchvision.models.segmentation import deeplabv3_resnet50


def build():
    return deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=8, aux_loss=False)
"""


def test_a_torchvision_model_through_its_out_dict(native, monkeypatch, synth_root):
    import numpy as np
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix
    from segaudit.data import build_dataset, prepare_dataset

    (native["base"] / "pkg" / "segaudit_test_tv.py").write_text(textwrap.dedent(TORCHVISION_FACTORY))
    monkeypatch.syspath_prepend(str(native["base"] / "pkg"))
    import segaudit_test_tv

    torch.manual_seed(0)
    model = segaudit_test_tv.build().eval()
    weights = native["base"] / "tv.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    record = _audit(native, weights, "--factory", "segaudit_test_tv:build")
    # By hand: the same model on each normalised val image, its `out` argmax, sklearn's counts.
    dcfg = prepare_dataset(compose(native["tiny"]).dataset, native["base"] / "cache")
    counts = np.zeros((8, 8), dtype=np.int64)
    with torch.inference_mode():
        for image, mask in build_dataset(dcfg, "val", train=False):
            pred = model(image[None])["out"].argmax(1)[0].numpy().ravel()
            keep = mask.numpy().ravel() != 255
            counts += sk_confusion_matrix(mask.numpy().ravel()[keep], pred[keep], labels=list(range(8)))
    tp, union = np.diag(counts), counts.sum(0) + counts.sum(1) - np.diag(counts)
    by_hand = 100 * np.mean(tp[union > 0] / union[union > 0])
    assert record["audit"]["miou"]["real"] == pytest.approx(by_hand, abs=0.01)


@pytest.mark.slow
def test_an_smp_folder_audits_cityscapes_at_1024x2048_like_its_factory_copy(tmp_path, monkeypatch):
    """A user's own smp model on Cityscapes-sized data: the folder and the same weights
    through a factory give the same audit at full size (whole-image inference)."""
    import segmentation_models_pytorch as smp

    from segaudit.data.synthetic import write_cityscapes_layout

    root = write_cityscapes_layout(tmp_path / "cs", {"train": 2, "val": 2})
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=19).eval()
    model.save_pretrained(tmp_path / "folder")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "segaudit_test_cs19.py").write_text(
        "import segmentation_models_pytorch as smp\n"
        "def build():\n    return smp.Unet('resnet18', encoder_weights=None, classes=19)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    common = ["dataset=cityscapes", f"dataset.root={root}", "train.eval_batch_size=1",
              f"paths.runs={tmp_path / 'runs'}", f"paths.cache={tmp_path / 'cache'}"]
    audits = {}
    for name, args in (("folder", [str(tmp_path / "folder")]),
                       ("factory", [str(tmp_path / "w.safetensors"), "--factory", "segaudit_test_cs19:build"])):
        done = runner.invoke(app, ["audit", *args, *common, f"run_id={name}"])
        assert done.exit_code == 0, done.output
        audits[name] = json.loads((tmp_path / "runs" / name / "record.json").read_text())
    assert audits["folder"]["audit"]["inference"]["mode"] == "whole"
    _same(audits["factory"]["audit"]["miou"], audits["folder"]["audit"]["miou"], 0.01)
