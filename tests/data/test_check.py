"""`segaudit data check`, the alignment probe, --skip-bad, and damaged files (fuzzed)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from scenes import write_folder
from segaudit.cli import app
from segaudit.core.config import compose
from segaudit.core.errors import DataError
from segaudit.data import check as check_module
from segaudit.data import prepare_dataset
from segaudit.data.check import _read_pair, alignment_probe
from segaudit.data.folder import Sample, read_image, read_mask

runner = CliRunner()


@pytest.fixture
def bad_folder(tmp_path):
    """The issue's acceptance folder: a truncated PNG, a mask of the wrong size, a mask
    holding 77 for a 7-class dataset and an image without mask, among good pairs."""
    root = tmp_path / "bad"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / "images" / split / f"ok{i}.png")
            Image.fromarray(np.full((16, 16), i, np.uint8)).save(root / "masks" / split / f"ok{i}.png")
    (root / "dataset.yaml").write_text(yaml.safe_dump({"num_classes": 7}))
    images, masks = root / "images" / "train", root / "masks" / "train"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "truncated.png")
    data = (images / "truncated.png").read_bytes()
    (images / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(masks / "truncated.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "wrongsize.png")
    Image.fromarray(np.zeros((8, 16), np.uint8)).save(masks / "wrongsize.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "value77.png")
    Image.fromarray(np.full((16, 16), 77, np.uint8)).save(masks / "value77.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images / "lonely.png")
    return root


def test_acceptance_folder_names_all_four_files(bad_folder):
    result = subprocess.run(
        [sys.executable, "-m", "segaudit.cli", "data", "check", "dataset=folder", f"dataset.root={bad_folder}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4
    expected = {
        "truncated.png": "unreadable image",
        "wrongsize.png": "mask is 16x8 but its image is 16x16",
        "value77.png": "label values [77] outside [0, 7)",
        "lonely.png": "image without mask",
    }
    for name, problem in expected.items():
        assert any(name in line and problem in line for line in lines), (name, lines)
    assert "4 error(s)" in result.stdout


def test_clean_dataset_passes(synth_root):
    result = runner.invoke(app, ["data", "check", "dataset=folder", f"dataset.root={synth_root}"])
    assert result.exit_code == 0, result.output
    assert "no errors" in result.stdout and "alignment probe: 100.00%" in result.stdout
    assert "road" in result.stdout  # the per-class histogram names the classes


def test_training_refuses_bad_data_unless_skip_bad(bad_folder, tmp_path):
    common = [
        "dataset=folder",
        f"dataset.root={bad_folder}",
        "train.iters=1",
        "train.batch_size=2",
        "train.progress=false",
        f"paths.runs={tmp_path / 'runs'}",
    ]
    refused = runner.invoke(app, ["train", *common])
    assert refused.exit_code == 2 and "--skip-bad" in refused.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
    done = runner.invoke(app, ["train", "--skip-bad", *common, "run_id=rest"])
    assert done.exit_code == 0, done.output
    record = json.loads((tmp_path / "runs" / "rest" / "record.json").read_text())
    assert sorted(record["skipped"]["train"]) == ["lonely", "truncated", "value77", "wrongsize"]


def test_alignment_probe_catches_an_image_only_flip(synth_root, monkeypatch):
    dcfg = prepare_dataset(compose(["dataset=folder", f"dataset.root={synth_root}"]).dataset, "/")
    assert alignment_probe(dcfg) == 100.0
    real_build = check_module.build_transform

    def flips_only_the_image(tcfg, train, ignore_index):
        joint = real_build(tcfg, train, ignore_index)

        def apply(image, mask):
            image, mask = joint(image, mask)
            return torch.flip(image, dims=[-1]), mask  # the bug: the mask is not flipped

        return apply

    monkeypatch.setattr(check_module, "build_transform", flips_only_the_image)
    assert alignment_probe(dcfg) < 90.0
    report = check_module.check_dataset(dcfg)
    assert any(p.path == "dataset.transform" for p in report.errors)


def _damaged(data: bytes, rng: np.random.Generator) -> tuple[bytes, bool]:
    """A damaged copy of a file, and whether decoding it must fail."""
    kind = rng.integers(3)
    if kind == 0:
        return data[: rng.integers(0, len(data) // 2)], True  # truncated inside the pixel data
    if kind == 1:
        return rng.bytes(int(rng.integers(0, 400))), True  # random bytes: no image format
    flipped = bytearray(data)
    for position in rng.integers(0, len(data), size=5):
        flipped[position] = int(rng.integers(256))  # corrupted in place: may still decode
    return bytes(flipped), False


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_fuzzed_files_end_in_clear_errors(tmp_path, fmt):
    rng = np.random.default_rng(0)
    source = tmp_path / f"source.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(source, format=fmt)
    mask_source = tmp_path / "mask.png"
    Image.fromarray(rng.integers(0, 5, (24, 24), dtype=np.uint8)).save(mask_source)
    refused = 0
    for case in range(60):
        broken = tmp_path / f"case{case}.{fmt.lower()}"
        data, image_must_fail = _damaged(source.read_bytes(), rng)
        broken.write_bytes(data)
        broken_mask = tmp_path / f"case{case}_mask.png"
        data, mask_must_fail = _damaged(mask_source.read_bytes(), rng)
        broken_mask.write_bytes(data)
        for reader, path, must_fail in (
            (read_image, broken, image_must_fail),
            (read_mask, broken_mask, mask_must_fail),
        ):
            try:
                reader(path)
            except DataError as err:
                assert str(path) in str(err) and "\n" not in str(err)
                refused += 1
            else:
                assert not must_fail, f"{path}: a truncated or random file decoded"
        problems, _, _, _ = _read_pair(Sample("x", broken, broken_mask), 5, 255, None)
        assert all(isinstance(p, str) and "\n" not in m for p, m in problems)
        assert bool(problems) >= (image_must_fail or mask_must_fail)  # reported when it must be
    assert refused >= 60  # about two thirds of the 120 files cannot decode


@pytest.mark.parametrize(
    "args,expected",
    [
        (["dataset=cityscapes"], "dataset.root is not set"),
        (["dataset=cityscapez"], "unknown dataset 'cityscapez' (choices: bdd10k, cityscapes,"),
        (["dataset=folder", "dataset.transform.hflip=yes"], "dataset.transform.hflip: expected a number"),
    ],
)
def test_bad_dataset_input_is_one_line(args, expected, tmp_path):
    result = runner.invoke(app, ["data", "check", *args, f"paths.runs={tmp_path}"])
    assert result.exit_code == 2 and expected in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_empty_folder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    for preset in ("cityscapes", "folder"):
        result = runner.invoke(
            app, ["train", f"dataset={preset}", f"dataset.root={tmp_path / 'empty'}", f"paths.runs={tmp_path / 'runs'}"]
        )
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_damaged_or_foreign_checkpoints_leave_the_runs_root_intact(tiny, runs_root, tmp_path):
    from segaudit.train.engine import train

    train(compose(tiny + ["run_id=kept", "train.ckpt_every=1"]))
    before = {p: p.read_bytes() for p in (runs_root / "kept").iterdir()}
    checkpoint = runs_root / "kept" / "checkpoint.pt"
    # Another class count: audit refuses with one line.
    foreign = torch.load(checkpoint, weights_only=True)
    foreign["config"]["dataset"]["num_classes"] = 5
    torch.save(foreign, tmp_path / "foreign.pt")
    result = runner.invoke(app, ["audit", "model", str(tmp_path / "foreign.pt"), *tiny])
    assert result.exit_code == 2 and "weights do not fit" in result.stderr
    # A truncated checkpoint on resume: one line, and the run directory is untouched.
    run_copy = runs_root / "cut"
    run_copy.mkdir()
    for path, data in before.items():
        (run_copy / path.name).write_bytes(data[: len(data) // 3] if path.name == "checkpoint.pt" else data)
    result = runner.invoke(app, ["train", f"paths.runs={runs_root}", "resume=cut"])
    assert result.exit_code == 2 and "unreadable checkpoint" in result.stderr, result.output
    assert {p: p.read_bytes() for p in (runs_root / "kept").iterdir()} == before


def test_an_image_with_an_exif_rotation_is_named_as_a_warning(tmp_path):
    """A JPEG whose EXIF orientation tag viewers honour: the check names it (a warning, it
    still trains) and says segaudit reads the stored pixels; an upright tag says nothing."""
    root = write_folder(tmp_path / "d", {"train": [(40, 64)] * 3, "val": [(40, 64)] * 2}, image_ext=".jpg")
    for name, value in (("0001.jpg", 6), ("0002.jpg", 1)):
        path = root / "images" / "train" / name
        exif = Image.Exif()
        exif[check_module.EXIF_ORIENTATION] = value
        Image.open(path).convert("RGB").save(path, exif=exif, quality=95)
    dcfg = compose(["dataset=folder", f"dataset.root={root}", "dataset.layout.image_suffix=.jpg"]).dataset
    report = check_module.check_dataset(prepare_dataset(dcfg, "/"), probe=False)
    turned = [p for p in report.problems if "EXIF" in p.message]
    assert [(p.path.endswith("0001.jpg"), p.error) for p in turned] == [(True, False)]
    assert "rotated 90° clockwise" in turned[0].message and "reads the pixels as stored" in turned[0].message
    assert not [p for p in report.problems if p.error]
