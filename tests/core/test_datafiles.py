"""Files are data, never instructions: a saved config decides what to compute but not where
to write or send; no `${...}` from a file is resolved; no YAML alias, device or FIFO is
read; card values are checked; CSV exports do not run formulas in a spreadsheet."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image
from typer.testing import CliRunner

from scenes import with_dataset_yaml
from segaudit.cli import app
from segaudit.core.config import COMMAND_OWNED, compose, load_yaml, with_command_settings
from segaudit.core.datafiles import read_yaml, spreadsheet_safe
from segaudit.core.errors import ConfigError, DataError
from segaudit.data import prepare_dataset
from segaudit.models.sources import check_declared_classes, load_smp_dir, read_card_file
from segaudit.report.terminal import export_frame, format_frame
from segaudit.train.engine import train
from segaudit.workflows.inventory import plan_inventory
from segaudit.workflows.predictions import _read_prediction, export_inputs

runner = CliRunner()
SECRET = "segaudit-test-secret-7f3a"
ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, n in zip("abcdefgh", "bcdefghi")
    )
    + "mean: *i\n"
)


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("SEGAUDIT_TEST_SECRET", SECRET)
    return "${oc.env:SEGAUDIT_TEST_SECRET}"


# --------------------------------------------------------------------------- saved configs
EDITED = [  # what a hand-edited run folder's config.yaml could redirect
    (
        "logger",
        {
            "_target_": "segaudit.runs.trackers.MLflowTracker",
            "name": "mlflow",
            "requires": "mlflow",
            "tracking_uri": "sqlite:////tmp/segaudit-evil/evil.db",
            "experiment": "x",
            "artifacts": True,
            "http_timeout": 1,
            "http_retries": 0,
        },
    ),
    ("paths", {"runs": "/tmp/segaudit-evil/runs", "cache": "/tmp/segaudit-evil/cache"}),
    ("device", "cuda:7"),
    ("source.trust", True),
    ("source.factory", "os:system"),
    ("card.factory", "os:system"),
    ("train.num_workers", 64),
]


@pytest.mark.parametrize("key,value", EDITED, ids=[k for k, _ in EDITED])
def test_a_saved_config_never_says_where_to_write_or_whether_to_run_code(tiny, key, value):
    command = compose(tiny)
    saved = compose(tiny + ["train.iters=7"])
    OmegaConf.update(saved, key, value, force_add=True)
    kept = with_command_settings(saved, command)
    assert OmegaConf.select(kept, key) != OmegaConf.select(saved, key)
    assert OmegaConf.select(kept, key) == OmegaConf.select(command, key)
    assert kept.train.iters == 7  # what to compute stays the saved run's
    assert set(k for k, _ in EDITED) <= set(COMMAND_OWNED)


def test_resume_of_an_edited_run_folder_writes_nothing_elsewhere(tiny, runs_root, tmp_path):
    """The issue's repro: an MLflow tracker with a tracking URI outside the runs folder,
    planted in a paused run's config.yaml; the resumed run completes under the command's
    settings (no tracker) and nothing appears where the file pointed."""
    elsewhere = tmp_path / "elsewhere"
    paused = train(compose(tiny + ["train.iters=4", "run_id=edited"]), stop_at=2)
    assert paused["status"] == "paused"
    folder = runs_root / "edited"
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    saved["logger"] = {**dict(EDITED)["logger"], "tracking_uri": f"sqlite:///{elsewhere}/evil.db"}
    saved["paths"]["cache"] = str(elsewhere / "cache")
    (folder / "config.yaml").write_text(yaml.safe_dump(saved))
    done = train(compose([f"paths.runs={runs_root}", "resume=edited"]))
    assert done["status"] == "completed" and done["step"] == 4
    assert not elsewhere.exists()
    assert not list(runs_root.glob("mlflow*")) and not (folder / "mlruns").exists()


def test_a_saved_config_with_interpolation_is_refused(tmp_path, secret_env):
    path = tmp_path / "config.yaml"
    path.write_text(f"strategy: '{secret_env}'\ntrain:\n  iters: 3\n")
    with pytest.raises(ConfigError, match="strategy: '\\$\\{...\\}' is interpolation") as err:
        load_yaml(path)
    assert SECRET not in str(err.value)


# --------------------------------------------------------------------------- dataset.yaml
def _dataset_with_meta(synth_root, tmp_path, text: str):
    root = with_dataset_yaml(synth_root, tmp_path / "data", text.encode())
    return compose(["dataset=folder", f"dataset.root={root}"]).dataset


def test_dataset_yaml_interpolation_is_refused_not_resolved(synth_root, tmp_path, secret_env):
    names = ", ".join(["road"] * 7 + [f"'{secret_env}'"])
    dcfg = _dataset_with_meta(synth_root, tmp_path, f"num_classes: 8\nclass_names: [{names}]\n")
    with pytest.raises(DataError, match=r"dataset.yaml: class_names\[7\]: '\$\{...\}' is interpolation") as err:
        prepare_dataset(dcfg, tmp_path / "cache")
    assert SECRET not in str(err.value)


@pytest.mark.parametrize(
    "text,message",
    [  # found by tests/core/test_fuzz_files.py
        ("class_names: true\n", "expected a list of names, got True"),
        ("num_classes: 8\nignore_index: true\n", "ignore_index: True is not a label id"),
        ('num_classes: 8\nclass_colors: {"a\\nb": "${oc.env:HOME}"}\n', "class_colors.'a\\nb': '${...}'"),
    ],
)
def test_dataset_yaml_odd_values_are_one_line(synth_root, tmp_path, text, message):
    dcfg = _dataset_with_meta(synth_root, tmp_path, text)
    with pytest.raises(DataError) as err:
        prepare_dataset(dcfg, tmp_path / "cache")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_dataset_yaml_alias_bomb_is_refused_at_once(synth_root, tmp_path):
    dcfg = _dataset_with_meta(synth_root, tmp_path, "num_classes: 8\n" + ALIAS_BOMB)
    with pytest.raises(DataError, match="YAML aliases"):
        prepare_dataset(dcfg, tmp_path / "cache")


def test_yaml_that_is_not_a_regular_file_or_too_large_is_not_read(tmp_path):
    fifo = tmp_path / "card.yaml"
    os.mkfifo(fifo)  # opening it for reading would block forever
    with pytest.raises(ConfigError, match="not a regular file"):
        read_yaml(fifo, "model card")
    deep = tmp_path / "deep.yaml"
    deep.write_text("mean: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        read_yaml(deep, "model card")
    big = tmp_path / "big.yaml"
    big.write_text("x: " + "y" * (2 * 1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match="larger than 1024 kB"):
        read_yaml(big, "model card")


# --------------------------------------------------------------------------- model cards
CARDS = [
    ("mean: [a, b, c]\n", "mean=['a', 'b', 'c']: must list 3 finite numbers"),
    ("std: [0.2, 0.2, 1e308]\n", "std=[0.2, 0.2, '1e308']: must list 3 finite numbers"),  # YAML 1.1: text
    ("std: [0, 0, 0]\n", "std=[0, 0, 0]: every channel's std must be > 0"),
    ("mean: [.nan, 0.5, 0.5]\n", "must list 3 finite numbers"),
    ("mean: [.inf, 0.5, 0.5]\n", "must list 3 finite numbers"),
    ("input_range: true\n", "input_range=True: choose 1"),
    ("input_range: 100\n", "input_range=100: choose 1"),
    ('upsample: "no"\n', "upsample='no': must be true or false"),
    ("output: [1]\n", "output=[1]: must be a dict key"),
    ("input_size: [100000, 512]\n", "input_size=[100000, 512]: must be [H, W], two whole numbers in 1..8192"),
    ("input_size: [true, 512]\n", "input_size=[True, 512]"),
    ("channels: grb\n", "channels='grb': choose rgb or bgr"),
    ("factory: [os, system]\n", "factory=['os', 'system']: must be package.module:function"),
    (ALIAS_BOMB, "YAML aliases"),
]


@pytest.mark.parametrize("text,message", CARDS, ids=[m[:30] for _, m in CARDS])
def test_a_card_value_of_the_wrong_kind_is_one_line(tmp_path, text, message):
    path = tmp_path / "model.card.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_card_file(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_a_well_formed_card_is_read(tmp_path):
    path = tmp_path / "model.card.yaml"
    path.write_text(
        "mean: [123.7, 116.3, 103.5]\nstd: [58.4, 57.1, 57.4]\ninput_range: 255\n"
        "upsample: false\noutput: 0\ninput_size: [512, 1024]\nchannels: bgr\n"
    )
    card = read_card_file(path)
    assert (card.input_range, card.upsample, card.output, card.input_size) == (255, False, 0, [512, 1024])


# --------------------------------------------------------------------------- declared sizes
def test_a_declared_billion_classes_is_refused_before_building(tmp_path):
    folder = tmp_path / "smp-model"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"_model_class": "Unet", "encoder_name": "resnet18", "classes": 1_000_000_000})
    )
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"classes=1000000000: a model's classes must be a whole number"):
        load_smp_dir(folder)
    for config in ({"num_labels": 10**9}, {"num_labels": True}, {"id2label": {str(i): "x" for i in range(10_001)}}):
        with pytest.raises(ConfigError):
            check_declared_classes(config, folder / "config.json")
    check_declared_classes({"num_labels": 150, "id2label": {str(i): "x" for i in range(150)}}, folder)


# --------------------------------------------------------------------------- inventory CSVs
def test_inventory_rows_with_interpolation_devices_or_fifos_fail_alone(tmp_path, secret_env):
    good = tmp_path / "model.pt"
    good.write_bytes(b"weights")
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    csv = tmp_path / "models.csv"
    pd.DataFrame(
        {"source": [str(good), str(good), "/dev/zero", str(fifo)], "strategy": ["baseline", secret_env, "x", "y"]}
    ).to_csv(csv, index=False)
    rows = plan_inventory(csv, [])
    assert rows[0].error is None
    assert "line 2: strategy: '${...}' is interpolation" in rows[1].error and SECRET not in rows[1].error
    assert "/dev/zero: not a regular file" in rows[2].error
    assert f"{fifo}: not a regular file" in rows[3].error


# --------------------------------------------------------------------------- exports
def test_csv_exports_neutralise_formulas_and_parquet_keeps_raw_values(tmp_path):
    frame = pd.DataFrame(
        {
            "strategy": ['=HYPERLINK("http://x","y")', "+1", "-cmd", "@SUM(A1)", "\tx", "plain"],
            "miou": [1.0, -2.0, 3.0, 4.0, 5.0, 6.0],
        }
    )
    export_frame(frame, tmp_path / "out.csv")
    back = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert back["strategy"].tolist() == ["'" + s for s in frame["strategy"][:5]] + ["plain"]
    assert back["miou"].tolist() == frame["miou"].tolist()  # numbers stay numbers
    assert format_frame(frame, "csv").splitlines()[1].startswith("\"'=HYPERLINK")
    export_frame(frame, tmp_path / "out.parquet")
    assert pd.read_parquet(tmp_path / "out.parquet")["strategy"].tolist() == frame["strategy"].tolist()
    assert spreadsheet_safe(-2.0) == -2.0 and spreadsheet_safe("a=b") == "a=b"


def test_export_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "taken.csv").mkdir()  # a folder where the file should go
    with pytest.raises(ConfigError, match="--export .*taken.csv: cannot write it"):
        export_frame(pd.DataFrame({"a": [1]}), tmp_path / "taken.csv")


def test_export_inputs_onto_a_file_and_predictions_outside_the_classes(tiny, tmp_path):
    (tmp_path / "inputs").write_text("a file")
    with pytest.raises(ConfigError, match="a file is in the way"):
        export_inputs(compose(tiny), tmp_path / "inputs")
    png = tmp_path / "pred.png"
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(png)
    with pytest.raises(DataError, match="class id 200 outside 0..7"):
        _read_prediction(png, (4, 4), 8)


def test_cli_refusals_are_one_line_without_the_secret(tiny, tmp_path, secret_env):
    root = tmp_path / "copy"
    shutil.copytree(tiny[1].split("=", 1)[1], root)
    (root / "dataset.yaml").write_text(f"num_classes: 8\nclass_names: ['{secret_env}', b, c, d, e, f, g, h]\n")
    result = runner.invoke(app, ["train", *tiny, f"dataset.root={root}"])
    assert result.exit_code == 2 and "is interpolation" in result.stderr, result.output
    assert SECRET not in result.output and len(result.stderr.strip().splitlines()) == 1
