"""Models segaudit did not train: exported copies of one model must audit the same."""

import json
import pickle
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.export import Dim
from trained import audit_source, same_miou, tiny_segformer
from typer.testing import CliRunner

from expected import audit_exit, read
from segaudit.cli import app
from segaudit.core.config import compose

runner = CliRunner()


def test_smp_save_pretrained_folder_audits_like_the_original(native):
    folder = native["base"] / "smp-dir"
    native["model"].save_pretrained(folder)  # what a plain smp script writes
    record = audit_source(native, folder, "--plots", str(native["base"] / "plots"))
    same_miou(record["audit"]["miou"], native["miou"], 0.01)
    assert record["model"] == "external-smp" and record["phase"] == "audit"
    assert (native["base"] / "plots" / f"samples_{record['run_id']}.png").is_file()
    listed = runner.invoke(app, ["report", f"paths.runs={native['runs']}", "--format", "json"])
    assert record["run_id"] in [row["run_id"] for row in json.loads(listed.stdout)]


def test_factory_with_prefixed_safetensors_weights(native, monkeypatch):
    monkeypatch.syspath_prepend(str(native["base"] / "pkg"))
    weights = native["base"] / "ddp-weights.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in native["model"].state_dict().items()}, weights)
    record = audit_source(native, weights, "--factory", "segaudit_test_factory:build")
    same_miou(record["audit"]["miou"], native["miou"], 0.01)


def test_torchscript_and_pt2_need_trust_then_audit_thesame_miou(native):
    example = torch.zeros(2, 3, 32, 32)
    scripted = native["base"] / "model.ts"
    torch.jit.save(torch.jit.trace(native["model"], example), scripted)
    program = native["base"] / "model.pt2"
    torch.export.save(
        torch.export.export(native["model"], (example,), dynamic_shapes=({0: Dim("batch", min=1, max=64)},)), program
    )
    for path in (scripted, program):
        refused = runner.invoke(app, ["audit", "model", str(path), *native["tiny"]])
        assert refused.exit_code == 2 and "--trust-model" in refused.stderr, refused.output
        record = audit_source(native, path, "--trust-model")
        same_miou(record["audit"]["miou"], native["miou"], 0.01)


def test_a_bgr_255_model_needs_its_card(native, monkeypatch):
    monkeypatch.syspath_prepend(str(native["base"] / "pkg"))
    import segaudit_test_factory as factory

    wrapped = factory.Bgr255()
    wrapped.net.load_state_dict(native["model"].state_dict())
    weights = native["base"] / "bgr.safetensors"
    save_file({k: v.contiguous() for k, v in wrapped.state_dict().items()}, weights)
    no_card = audit_source(native, weights, "--factory", "segaudit_test_factory:build_bgr255")
    # The default card feeds it RGB in 0..1: it scores near the prior, and the probe names
    # the fix (the numbers stay those of the card as given).
    block = no_card["audit"]
    assert block["miou"]["real"] - block["prior_miou"] <= 3 and block["red_flags"]
    suggestion = block["probe"]["suggestion"]["change"]
    assert "channels=bgr" in suggestion and "input_range=255" in suggestion
    assert block["probe"]["suggestion"]["miou"] > block["probe"]["baseline"] + 10
    (native["base"] / "bgr.safetensors.card.yaml").write_text(
        "channels: bgr\ninput_range: 255\nmean: [0, 0, 0]\nstd: [1, 1, 1]\n"
    )
    with_card = audit_source(native, weights, "--factory", "segaudit_test_factory:build_bgr255", "seed=1")
    same_miou(with_card["audit"]["miou"], native["miou"], 0.01)
    overrides = audit_source(
        native,
        native["base"] / "bgr.safetensors",
        "--factory",
        "segaudit_test_factory:build_bgr255",
        "card.channels=rgb",
        "seed=2",
    )
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
    for path, extra in (
        (as_checkpoint, []),
        (as_state_dict, ["--factory", "segaudit_test_factory:build"]),
        (as_model, []),
    ):
        done = runner.invoke(app, ["audit", "model", str(path), *native["tiny"], *extra])
        assert done.exit_code == 2, done.output
        assert len(done.stderr.strip().splitlines()) == 1 and str(path) in done.stderr
    assert not marker.exists()


def test_weights_without_a_factory_and_a_wrong_class_count_are_one_line(native, monkeypatch):
    monkeypatch.syspath_prepend(str(native["base"] / "pkg"))
    weights = native["base"] / "plain.pt"
    torch.save(native["model"].state_dict(), weights)
    done = runner.invoke(app, ["audit", "model", str(weights), *native["tiny"]])
    assert done.exit_code == 2 and "give --factory" in done.stderr, done.output
    (native["base"] / "pkg" / "segaudit_test_five.py").write_text(
        "import segmentation_models_pytorch as smp\n"
        "def build():\n    return smp.Unet('resnet18', encoder_weights=None, classes=5)\n"
    )
    five = smp_five_weights(native["base"])
    done = runner.invoke(app, ["audit", "model", str(five), *native["tiny"], "--factory", "segaudit_test_five:build"])
    assert done.exit_code == 2 and "expected (N, 8, H, W)" in done.stderr, done.output


def smp_five_weights(base: Path) -> Path:
    import segmentation_models_pytorch as smp

    path = base / "five.safetensors"
    save_file(
        {k: v.contiguous() for k, v in smp.Unet("resnet18", encoder_weights=None, classes=5).state_dict().items()}, path
    )
    return path


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
    record = audit_source(native, weights, "--factory", "segaudit_test_tv:build")
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


# --------------------------------------------------------------------------- verdict, API
def test_red_flags_by_hand():
    from segaudit.diagnostics.audit import red_flags

    gate = compose([]).gate  # noise_ratio 0.7, prior and shuffled margins 3
    healthy = {"real": 50.0, "noise": 34.9, "blank": 5.0, "shuffled": 46.9}
    assert red_flags(healthy, prior=46.9, gate=gate) == []
    noisy = red_flags({**healthy, "noise": 35.1}, prior=20.0, gate=gate)
    assert len(noisy) == 1 and "35.1, more than 0.7 x its real-image 50.0" in noisy[0]
    at_prior = red_flags({**healthy, "shuffled": 47.0}, prior=47.0, gate=gate)
    assert len(at_prior) == 2 and "no better than its analytic prior 47.0" in at_prior[0]
    below = red_flags({**healthy, "real": 10.0, "noise": 1.0, "shuffled": 8.0}, prior=20.0, gate=gate)
    assert len(below) == 2  # under the prior counts too; noise 1 < 0.7 x 10 does not


def test_reported_miou_says_which_side_to_look_at():
    from segaudit.diagnostics.audit import reported_finding

    assert reported_finding(61.3, 32.0, None, 3.0) is None
    assert "your evaluation loses 21 points: look at evaluation" in reported_finding(61.3, 32.0, 40.1, 3.0)
    assert "never learned content: look at training" in reported_finding(33.0, 32.0, 40.1, 3.0)
    assert "check the model card" in reported_finding(45.0, 32.0, 60.0, 3.0)
    assert "the two agree" in reported_finding(45.0, 32.0, 46.0, 3.0)


def test_cli_reported_miou_lands_in_the_record_and_the_panel(native):
    folder = native["base"] / "smp-reported"
    native["model"].save_pretrained(folder)
    reported = native["miou"]["real"] - 15
    record = audit_source(native, folder, "--reported-miou", f"{reported}")
    assert record["audit"]["reported_miou"] == pytest.approx(reported)
    assert "look at evaluation" in record["audit"]["finding"]


def test_python_api_audits_a_model_in_memory_like_the_cli(native):
    import segaudit

    model = native["model"].train()  # as it is in a user's training loop
    runs = native["base"] / "api-runs"
    dataset_args = [a for a in native["tiny"] if a.startswith(("dataset.", "train.eval"))]
    root = next(a.split("=", 1)[1] for a in dataset_args if a.startswith("dataset.root="))
    overrides = [a for a in dataset_args if not a.startswith("dataset.root=")]
    record = segaudit.audit_model(model, dataset="folder", root=root, runs=runs, overrides=overrides, name="my-unet")
    assert model.training  # put back the way it was
    same_miou(record["audit"]["miou"], native["miou"], 0.01)
    assert record["encoder"] == "my-unet" and record["audit"]["red_flags"] == []
    assert segaudit.check_model(model.eval(), dataset="folder", root=root, runs=runs, overrides=overrides) == []
    # A plain function works too; an untrained model raises its red flags.
    torch.manual_seed(0)
    import segmentation_models_pytorch as smp

    untrained = smp.Unet("resnet18", encoder_weights=None, classes=8).eval()
    with pytest.raises(segaudit.RedFlags) as raised:
        segaudit.check_model(lambda x: untrained(x), dataset="folder", root=root, runs=runs, overrides=overrides)
    assert raised.value.flags and raised.value.record["phase"] == "audit"
    listed = runner.invoke(app, ["report", f"paths.runs={runs}", "--format", "json"])
    assert len(json.loads(listed.stdout)) == 3


def test_class_map_reorders_a_models_channels(native):
    from segaudit.models.sources import channel_for_class, class_map_list

    permuted = native["base"] / "permuted"
    order = [3, 0, 7, 1, 6, 2, 5, 4]  # model channel i predicts dataset class order[i]
    model = native["model"]
    clone = type(model)("resnet18", encoder_weights=None, classes=8)
    clone.load_state_dict(model.state_dict())
    head = clone.segmentation_head[0]
    with torch.no_grad():  # channel i of the clone = channel order[i] of the original
        head.weight.copy_(model.segmentation_head[0].weight[order])
        head.bias.copy_(model.segmentation_head[0].bias[order])
    clone.save_pretrained(permuted)
    (permuted / "card.yaml").write_text(f"class_map: {order}\n")
    record = audit_source(native, permuted)
    same_miou(record["audit"]["miou"], native["miou"], 0.01)
    # Cityscapes label ids: 34 model channels onto the 19 train ids, each exactly once.
    channels = channel_for_class("cityscapes_label_ids")
    labels = class_map_list("cityscapes_label_ids")
    assert len(labels) == 34 and len(channels) == 19 and labels[7] == 0 and channels[0] == 7
    for bad in ([0, 0, 1], [1, 2], "imagenet"):
        with pytest.raises(Exception, match="class_map"):
            channel_for_class(bad)


PREDICT_SCRIPT = """
import json
import sys
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from PIL import Image

inputs, model_dir, out = map(Path, sys.argv[1:])
manifest = json.loads((inputs / "manifest.json").read_text())
model = smp.Unet.from_pretrained(str(model_dir)).eval()
mean = torch.tensor(manifest["mean"]).view(1, 3, 1, 1)
std = torch.tensor(manifest["std"]).view(1, 3, 1, 1)
for condition in manifest["conditions"]:
    (out / condition).mkdir(parents=True)
    for item in manifest["images"]:
        rgb = np.array(Image.open(inputs / condition / (item["stem"] + ".png")).convert("RGB"))
        x = (torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255 - mean) / std
        with torch.inference_mode():
            labels = model(x).argmax(1)[0].numpy().astype(np.uint8)
        Image.fromarray(labels).save(out / condition / (item["stem"] + ".png"))
"""


def test_predictions_only_scores_like_the_in_processaudit_source(native):
    """segaudit writes the inputs, a separate script (no segaudit import) predicts, segaudit
    scores the PNGs: the numbers are the in-process audit's."""
    import subprocess
    import sys

    base = native["base"]
    native["model"].save_pretrained(base / "smp-for-predictions")
    (base / "predict.py").write_text(textwrap.dedent(PREDICT_SCRIPT))
    exported = runner.invoke(app, ["audit", "export-inputs", str(base / "inputs"), *native["tiny"]])
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((base / "inputs" / "manifest.json").read_text())
    assert len(manifest["images"]) == 8 and len(list((base / "inputs" / "noise").glob("*.png"))) == 8
    subprocess.run(
        [
            sys.executable,
            str(base / "predict.py"),
            str(base / "inputs"),
            str(base / "smp-for-predictions"),
            str(base / "preds"),
        ],
        check=True,
    )
    record = _audit_predictions(native, base / "preds")
    same_miou(record["audit"]["miou"], native["miou"], 0.01)
    assert record["model"] == "external-predictions" and record["audit"]["red_flags"] == []
    # A missing prediction is a one-line error naming the file; a non-empty export folder too.
    next((base / "preds" / "blank").glob("*.png")).unlink()
    done = runner.invoke(app, ["audit", "score-predictions", str(base / "preds"), *native["tiny"]])
    assert done.exit_code == 2 and "prediction missing" in done.stderr, done.output
    again = runner.invoke(app, ["audit", "export-inputs", str(base / "inputs"), *native["tiny"]])
    assert again.exit_code == 2 and "not empty" in again.stderr


def _audit_predictions(native, folder):
    done = runner.invoke(app, ["audit", "score-predictions", str(folder), *native["tiny"], "run_id=from-pngs"])
    record = read(native["runs"], "from-pngs")
    assert done.exit_code == audit_exit(record), done.output
    return record


def test_a_hugging_face_segformer_folder_and_its_preprocessor_card(native):
    """A SegFormer folder audits like the same model handed to the Python API; its
    preprocessor config (mean/std 0.5, rescaled to 0..1) fills the card."""
    pytest.importorskip("transformers", reason="the [hf] extra is not installed")
    import segaudit

    model = tiny_segformer(8).eval()
    folder = native["base"] / "segformer"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
            }
        )
    )
    record = audit_source(native, folder)
    assert record["model"] == "external-hf"
    card = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "input_range": 1, "output": "logits"}
    dataset_args = [a for a in native["tiny"] if a.startswith(("dataset.", "train.eval"))]
    root = next(a.split("=", 1)[1] for a in dataset_args if a.startswith("dataset.root="))
    by_api = segaudit.audit_model(
        model,
        dataset="folder",
        root=root,
        card=card,
        runs=native["base"] / "hf-api",
        overrides=[a for a in dataset_args if not a.startswith("dataset.root=")],
    )
    same_miou(record["audit"]["miou"], by_api["audit"]["miou"], 0.01)
    # Without the preprocessor config the dataset's ImageNet statistics apply: other numbers.
    (folder / "preprocessor_config.json").unlink()
    imagenet = audit_source(native, folder, "seed=3")
    assert imagenet["audit"]["miou"] != pytest.approx(record["audit"]["miou"], abs=1e-6)


def test_a_hugging_face_folder_without_the_extra_is_one_line(native, monkeypatch):
    pytest.importorskip("transformers", reason="the [hf] extra is not installed")
    folder = native["base"] / "segformer-noextra"
    tiny_segformer(8).eval().save_pretrained(folder)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    done = runner.invoke(app, ["audit", "model", str(folder), *native["tiny"]])
    assert done.exit_code == 2 and "pip install 'segaudit[hf]'" in done.stderr, done.output


def test_a_factory_named_by_a_card_file_needs_trust(native, monkeypatch):
    monkeypatch.syspath_prepend(str(native["base"] / "pkg"))
    weights = native["base"] / "carded.safetensors"
    save_file({k: v.contiguous() for k, v in native["model"].state_dict().items()}, weights)
    (native["base"] / "carded.safetensors.card.yaml").write_text("factory: segaudit_test_factory:build\n")
    refused = runner.invoke(app, ["audit", "model", str(weights), *native["tiny"]])
    assert refused.exit_code == 2 and "names a factory" in refused.stderr and "--trust-model" in refused.stderr
    record = audit_source(native, weights, "--trust-model")
    same_miou(record["audit"]["miou"], native["miou"], 0.01)


def test_a_model_fixed_to_one_input_size_gets_its_card_input_size(native):
    import segaudit

    def fixed_64(images):  # like a graph exported for 64x64 only
        if tuple(images.shape[-2:]) != (64, 64):
            raise RuntimeError(f"expected 64x64 input, got {tuple(images.shape[-2:])}")
        return native["model"](images)

    dataset_args = [a for a in native["tiny"] if a.startswith(("dataset.", "train.eval"))]
    root = next(a.split("=", 1)[1] for a in dataset_args if a.startswith("dataset.root="))
    common = {
        "dataset": "folder",
        "root": root,
        "runs": native["base"] / "size-runs",
        "overrides": [a for a in dataset_args if not a.startswith("dataset.root=")],
    }
    with pytest.raises(Exception, match="fails on a 32x32 image"):
        segaudit.audit_model(fixed_64, **common)
    resized = segaudit.audit_model(fixed_64, card={"input_size": [64, 64]}, **common)
    assert resized["audit"]["miou"]["real"] > resized["audit"]["prior_miou"] + 5  # it still reads the image
    same = segaudit.audit_model(native["model"], card={"input_size": [32, 32]}, **common)
    same_miou(same["audit"]["miou"], native["miou"], 0.01)  # the data's own size: nothing changes


def test_predictions_only_at_cityscapes_size_and_layout(tmp_path):
    """1024x2048 frames in city sub-folders: the export keeps the folders, and a constant
    prediction scores the same under every condition (by hand: the IoU of one class)."""
    import numpy as np
    from PIL import Image

    from segaudit.data.synthetic import write_cityscapes_layout

    root = write_cityscapes_layout(tmp_path / "cs", {"train": 2, "val": 2})  # train: the prior
    common = [
        "dataset=cityscapes",
        f"dataset.root={root}",
        "train.eval_batch_size=1",
        f"paths.runs={tmp_path / 'runs'}",
        f"paths.cache={tmp_path / 'cache'}",
    ]
    done = runner.invoke(app, ["audit", "export-inputs", str(tmp_path / "inputs"), *common])
    assert done.exit_code == 0, done.output
    manifest = json.loads((tmp_path / "inputs" / "manifest.json").read_text())
    assert [item["size"] for item in manifest["images"]] == [[1024, 2048]] * 2
    stems = [item["stem"] for item in manifest["images"]]
    assert all("/" in stem for stem in stems)  # city/frame, as the dataset stores them
    with Image.open(tmp_path / "inputs" / "noise" / f"{stems[0]}.png") as png:
        assert png.size == (2048, 1024) and png.mode == "RGB"
    road = np.zeros((1024, 2048), np.uint8)  # train id 0 everywhere
    for condition in manifest["conditions"]:
        for stem in stems:
            (tmp_path / "preds" / condition / stem).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(road).save(tmp_path / "preds" / condition / f"{stem}.png")
    scored = runner.invoke(app, ["audit", "score-predictions", str(tmp_path / "preds"), *common, "run_id=pngs"])
    assert scored.exit_code == 1, scored.output  # a constant prediction: red flags
    block = json.loads((tmp_path / "runs" / "pngs" / "record.json").read_text())["audit"]
    assert len(set(block["miou"].values())) == 1 and block["agreement_real_noise"] == pytest.approx(100.0)
