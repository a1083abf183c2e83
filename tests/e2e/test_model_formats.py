"""Model formats end to end: an ONNX export audits like the original, and an smp folder
audits Cityscapes at 1024x2048 like its factory copy (`slow`)."""

import pytest
import torch
from safetensors.torch import save_file
from torch.export import Dim
from trained import audit_source, same_miou
from typer.testing import CliRunner

from expected import audit_exit, read
from segaudit.cli import app

runner = CliRunner()


@pytest.mark.slow  # onnx export + runtime: ~18 s
def test_onnx_audits_like_the_original_and_its_metadata_fills_the_card(native):
    import onnx

    path = native["base"] / "model.onnx"
    batch, height, width = Dim("batch", min=1, max=64), Dim("h", min=32, max=2048), Dim("w", min=32, max=2048)
    torch.onnx.export(
        native["model"],
        (torch.zeros(2, 3, 32, 32),),
        str(path),
        dynamo=True,
        dynamic_shapes=({0: batch, 2: height, 3: width},),
    )
    record = audit_source(native, path)
    same_miou(record["audit"]["miou"], native["miou"], 0.1)
    assert record["model"] == "external-onnx"
    # The same graph stamped "expects BGR": the metadata is read, and a card override wins.
    stamped = onnx.load(str(path))
    onnx.helper.set_model_props(stamped, {"channels": '"bgr"'})
    onnx.save(stamped, str(native["base"] / "bgr-meta.onnx"))
    misread = audit_source(native, native["base"] / "bgr-meta.onnx")
    assert misread["audit"]["miou"]["real"] != pytest.approx(native["miou"]["real"], abs=0.5)
    fixed = audit_source(native, native["base"] / "bgr-meta.onnx", "card.channels=rgb")
    same_miou(fixed["audit"]["miou"], native["miou"], 0.1)


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
        "def build():\n    return smp.Unet('resnet18', encoder_weights=None, classes=19)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    common = [
        "dataset=cityscapes",
        f"dataset.root={root}",
        "train.eval_batch_size=1",
        "audit.probe=false",
        f"paths.runs={tmp_path / 'runs'}",
        f"paths.cache={tmp_path / 'cache'}",
    ]
    audits = {}
    for name, args in (
        ("folder", [str(tmp_path / "folder")]),
        ("factory", [str(tmp_path / "w.safetensors"), "--factory", "segaudit_test_cs19:build"]),
    ):
        done = runner.invoke(app, ["audit", "model", *args, *common, f"run_id={name}"])
        audits[name] = read(tmp_path / "runs", name)
        assert done.exit_code == audit_exit(audits[name]), done.output  # an untrained model: red flags
    assert audits["folder"]["audit"]["inference"]["mode"] == "whole"
    same_miou(audits["factory"]["audit"]["miou"], audits["folder"]["audit"]["miou"], 0.01)
