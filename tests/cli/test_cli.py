"""The command line as a user meets it: help, version, reports, and one-line errors."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from segaudit import __version__
from segaudit.cli import app
from segaudit.core.config import compose
from segaudit.train.engine import train

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def trained(tiny, runs_root):
    train(compose(tiny + ["strategy=first", "run_id=one"]))
    train(compose(tiny + ["strategy=second", "model=unet", "run_id=two"]))
    return runs_root


def test_version():
    result = _run("--version")
    assert result.exit_code == 0 and __version__ in result.output


@pytest.mark.parametrize("command", [["train"], ["report"], ["data", "synth"]])
def test_help_shows_examples(command):
    result = _run(*command, "--help")
    assert result.exit_code == 0 and "Examples" in result.output


def test_train_prints_the_run(tiny, runs_root):
    result = _run("train", *tiny, "run_id=cli")
    assert result.exit_code == 0, result.output
    assert "cli" in result.stdout and "completed" in result.stdout
    assert (runs_root / "cli" / "record.json").is_file()


def test_report_formats(trained, tmp_path):
    result = _run("report", "--format", "json", f"paths.runs={trained}")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["run_id"] for r in rows] == ["one", "two"]
    for key in (
        "run_id",
        "phase",
        "dataset",
        "model",
        "encoder",
        "loss",
        "train_condition",
        "eval_condition",
        "strategy",
        "seed",
        "status",
        "miou",
        "history",
    ):
        assert key in rows[0]
    assert rows[1]["model"] == "unet" and rows[0]["history"][-1]["step"] == 2
    assert rows[0]["miou"] == rows[0]["history"][-1]["miou"]

    result = _run("report", "--format", "csv", "--where", "strategy=second", f"paths.runs={trained}")
    assert result.exit_code == 0 and result.stdout.count("\n") == 2 and "second" in result.stdout
    result = _run("report", "--format", "md", f"paths.runs={trained}")
    assert result.exit_code == 0 and "| run_id" in result.stdout
    result = _run("report", "--where", "seed=0", "--where", "model=unet", f"paths.runs={trained}")
    assert result.exit_code == 0 and "two" in result.stdout and "one" not in result.stdout

    for name in ("runs.csv", "runs.parquet"):
        result = _run("report", "--export", tmp_path / name, f"paths.runs={trained}")
        assert result.exit_code == 0, result.output
    csv = pd.read_csv(tmp_path / "runs.csv")
    parquet = pd.read_parquet(tmp_path / "runs.parquet")
    assert list(csv.run_id) == list(parquet.run_id) == ["one", "two"]
    assert parquet.miou.tolist() == pytest.approx([r["miou"] for r in rows[0:2]])


@pytest.mark.parametrize(
    "args,expected",
    [
        (["train", "model=unett"], "unknown model 'unett' (choices: deeplabv3plus, pspnet, segformer, unet)"),
        (["train", "train.iterz=5"], "unknown config key 'train.iterz' (keys under train:"),
        (["train", "train.iters=abc"], "train.iters: expected an integer"),
        (["train", "train.iters=1,2"], "sweeps are not supported"),
        (["train", "dataset=folder"], "dataset.root is not set"),
        (["train", "dataset=folder", "dataset.root=/no/such/dir"], "/no/such/dir: dataset.root is not a folder"),
        (["train", "device=tpu"], "device: 'tpu' is not a torch device"),
        (["report", "--format", "xml"], "--format xml: choose one of table, json, csv, md"),
        (["report", "--where", "colour=red"], "--where colour: unknown column"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, expected, tmp_path):
    result = _run(*args, f"paths.runs={tmp_path}")
    assert result.exit_code == 2, result.output
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_orphan_files_are_named(tmp_path, synth_root):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    (root / "masks" / "train" / "train_00003.png").unlink()
    result = _run("train", "dataset=folder", f"dataset.root={root}", f"paths.runs={tmp_path / 'r'}")
    assert result.exit_code == 2 and "train_00003.png" in result.stderr
    assert not list((tmp_path / "r").glob("*"))  # nothing half-made in the runs root


def test_installed_console_script_fails_cleanly(tmp_path):
    """A real process: exit code 2, one line on stderr, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "segaudit.cli", "train", "optim=adam", f"paths.runs={tmp_path}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown optim 'adam' (choices: adamw, sgd)"


def test_data_synth(tmp_path):
    result = _run("data", "synth", "--out", tmp_path / "d", "--n-train", 3, "--n-val", 2, "--size", 32, "--seed", 1)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "d" / "images" / "train").glob("*.png"))) == 3
    assert (tmp_path / "d" / "dataset.yaml").is_file()
    again = _run("data", "synth", "--out", tmp_path / "d")
    assert again.exit_code == 2 and "not empty" in again.stderr


def test_report_plots_and_scope(tiny, runs_root, tmp_path):
    import numpy as np
    from PIL import Image

    from segaudit.workflows.prior import run_prior

    run_prior(compose(tiny))
    train(compose(tiny + ["eval_also=[noise,blank]", "run_id=probe", "train.log_every=1"]))
    result = _run("report", "plots", tmp_path / "plots", f"paths.runs={runs_root}")
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["learning_curves.png", "miou_by_condition_probe.png"]
    for png in pngs:
        picture = np.array(Image.open(png).convert("L"))
        assert picture.shape[0] > 100 and picture.std() > 5  # a real picture, not blank
    scope = _run("report", "scope", f"paths.runs={runs_root}")
    assert scope.exit_code == 0 and "by strategy" in scope.stdout


def test_report_diagnose_and_scope_paste_formats(trained, tmp_path):
    from records import verdict_record

    record = verdict_record()
    (trained / "gate-1").mkdir()
    (trained / "gate-1" / "record.json").write_text(json.dumps({**record, "phase": "gate"}))
    md = _run("report", "diagnose", "gate-1", "--format", "md", f"paths.runs={trained}")
    assert md.exit_code == 0, md.output
    assert "| trained on real, evaluated on noise" in md.stdout and "SPATIAL_SHORTCUT" in md.stdout
    as_json = json.loads(_run("report", "diagnose", "gate-1", "--format", "json", f"paths.runs={trained}").stdout)
    assert as_json[2]["miou"] == 40.2 and as_json[2]["decision"] == "2A"
    scope = json.loads(_run("report", "scope", "--format", "json", f"paths.runs={trained}").stdout)
    assert set(scope["groupings"]["strategy"]["groups"][0]) == {"name", "count", "mean", "std"}
    assert [g["name"] for g in scope["groupings"]["strategy"]["groups"]] == ["first", "second"]
    csv = _run("report", "scope", "--format", "csv", f"paths.runs={trained}")
    assert csv.exit_code == 2 and "choose one of table, json, md" in csv.stderr
    kept = json.loads(
        _run("report", "scope", "--where", "strategy=second", "--format", "json", f"paths.runs={trained}").stdout
    )  # --where picks the runs analysed
    assert [g["name"] for g in kept["groupings"]["strategy"]["groups"]] == ["second"]


def _subcommands(group: str) -> set[str]:
    import typer

    return set(typer.main.get_command(app).commands[group].commands)


@pytest.mark.parametrize(
    "group, old, new",
    [
        ("audit", ["RUN", "x=1"], ["model", "RUN", "x=1"]),
        ("audit", ["x=1", "--inventory", "m.csv", "--jobs", "2"], ["inventory", "m.csv", "x=1", "--jobs", "2"]),
        ("audit", ["--export-inputs=in/", "x=1"], ["export-inputs", "in/", "x=1"]),
        ("audit", ["--predictions", "p/"], ["score-predictions", "p/"]),
        ("audit", ["model", "RUN"], ["model", "RUN"]),
        ("audit", [], []),  # the group's help
        ("report", ["--diagnose", "D", "--html", "r.html"], ["html", "r.html", "--diagnose", "D"]),
        ("report", ["--classes", "R", "--plots", "out"], ["classes", "R", "--plots", "out"]),
        ("report", ["--scope", "--format", "json"], ["scope", "--format", "json"]),
        ("report", ["--compare", "strategy", "--baseline", "b"], ["compare", "strategy", "--baseline", "b"]),
        ("report", ["--where", "a=b"], ["table", "--where", "a=b"]),
        ("report", [], ["table"]),
        ("report", ["--help"], ["--help"]),
    ],
)
def test_old_spellings_route_to_the_new_commands(group, old, new):
    from segaudit.cli.legacy import route

    assert route(group, old, _subcommands(group)) == new


def test_old_retrain_flags_become_retrain_keys():
    from segaudit.cli.legacy import retrain_overrides

    old = [
        "--tier",
        "2",
        "--models",
        "unet,pspnet",
        "--seeds=0,1",
        "--init-from",
        "a b/it's.pt",
        "--freeze-encoder",
        "--launcher",
        "slurm",
        "--strategy",
        "mine",
        "train.iters=3",
    ]
    new = retrain_overrides(old)
    assert new[0] == "retrain.tier=2" and new[-1] == "train.iters=3" and "launcher=slurm" in new
    cfg = compose([o for o in new if not o.startswith("launcher=")])
    assert list(cfg.retrain.models) == ["unet", "pspnet"] and list(cfg.retrain.seeds) == [0, 1]
    assert cfg.retrain.init_from == "a b/it's.pt" and cfg.retrain.freeze_encoder is True
    assert cfg.retrain.strategy == "mine" and cfg.retrain.tier == 2


def test_an_old_spelling_still_works_with_a_one_line_note(tmp_path):
    (tmp_path / "runs").mkdir()
    old = _run("report", "--diagnose", "nope", f"paths.runs={tmp_path / 'runs'}")
    new = _run("report", "diagnose", "nope", f"paths.runs={tmp_path / 'runs'}")
    note, *rest = old.stderr.strip().splitlines()
    assert note.startswith("note: `segaudit report --diagnose nope") and "`segaudit report diagnose nope" in note
    assert old.exit_code == new.exit_code == 2 and rest == new.stderr.strip().splitlines()


def test_list_overrides_in_help_survive_rich_markup():
    shown = _run("retrain", "--help").output
    assert "retrain.models=[unet,pspnet]" in shown and "retrain.datasets=[cityscapes]" in shown
