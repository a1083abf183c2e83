"""`logger=tensorboard|mlflow`: what the trackers hold equals the run record, and a broken
tracker never fails a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from segaudit.cli import app
from segaudit.core.config import compose
from segaudit.core.errors import ConfigError
from segaudit.runs.trackers import MLflowTracker, TensorBoardTracker, build_tracker, flat_params, publish

runner = CliRunner()


def _train(tiny, *extra):
    result = runner.invoke(
        app, ["train", *tiny, "train.iters=4", "train.log_every=1", "train.eval_at=[2]", "eval_also=[noise]", *extra]
    )
    return result


def _record(runs_root, run_id):
    return json.loads((runs_root / run_id / "record.json").read_text())


def test_tensorboard_events_equal_the_record_at_every_step(tiny, runs_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _train(tiny, "logger=tensorboard", "run_id=tb")
    assert result.exit_code == 0, result.output
    record = _record(runs_root, "tb")
    events = EventAccumulator(str(runs_root / "tb" / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    for condition in ("real", "noise"):
        logged = [(e.step, e.value) for e in events.Scalars(f"{condition}/miou")]
        expected = [(h["step"], h["miou"]) for h in record["history"] if h["condition"] == condition]
        assert [s for s, _ in logged] == [s for s, _ in expected] == [2, 4]
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], abs=1e-4)
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(
        [e["loss"] for e in record["train_log"]], abs=1e-5
    )
    assert [e.step for e in events.Scalars("train/lr")] == [1, 2, 3, 4]
    assert "train/ips" in events.Tags()["scalars"]
    (image,) = events.Images("samples")  # the sample grid
    assert image.width > 100 and image.height > 100


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """One SQLite store for the module's MLflow tests (each new store migrates its schema)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_mlflow_run_holds_the_record_params_tags_and_artifacts(tiny, runs_root, tracking_uri):
    import mlflow

    result = _train(tiny, "logger=mlflow", f"logger.tracking_uri={tracking_uri}", "run_id=ml", "strategy=tier-probe")
    assert result.exit_code == 0, result.output
    record = _record(runs_root, "ml")
    mlflow.set_tracking_uri(tracking_uri)
    found = mlflow.search_runs(experiment_names=["segaudit"], filter_string="tags.`segaudit.run_id` = 'ml'")
    assert len(found) == 1
    run = found.iloc[0]
    assert run["status"] == "FINISHED" and run["tags.segaudit.phase"] == "train"
    assert run["tags.segaudit.strategy"] == "tier-probe" and run["params.model.encoder"] == "resnet18"
    client = mlflow.MlflowClient(tracking_uri)
    history = client.get_metric_history(run["run_id"], "real/miou")
    expected = [(h["step"], h["miou"]) for h in record["history"] if h["condition"] == "real"]
    history = sorted(history, key=lambda m: m.step)
    assert [m.step for m in history] == [s for s, _ in expected] == [2, 4]
    assert [m.value for m in history] == pytest.approx([v for _, v in expected])
    losses = sorted(client.get_metric_history(run["run_id"], "train/loss"), key=lambda m: m.step)
    assert [m.value for m in losses] == pytest.approx([e["loss"] for e in record["train_log"]])
    artifacts = {a.path for a in client.list_artifacts(run["run_id"])}
    assert {"record.json", "config.yaml"} <= artifacts


def test_a_verdict_is_a_tag(runs_root, tracking_uri, tmp_path):
    """A diagnose's gate record (no training steps) lands with its verdict and evidence."""
    import mlflow

    cfg = compose([f"paths.runs={runs_root}", "logger=mlflow", f"logger.tracking_uri={tracking_uri}"])
    (runs_root / "gate-x").mkdir(parents=True)
    bars = runs_root / "gate-x" / "evidence_gate-x.png"
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(bars)
    record = {
        "run_id": "gate-x",
        "phase": "gate",
        "strategy": "diagnose",
        "status": "completed",
        "step": 0,
        "verdict": "SPATIAL_SHORTCUT",
        "evidence": {"prior": 31.5, "real": 40.0, "notes": []},
        "metrics": {"miou": 40.0, "macc": 50.0, "aacc": 80.0},
        "plots": [str(bars)],
    }
    publish(cfg, runs_root / "gate-x", record)
    mlflow.set_tracking_uri(tracking_uri)  # not left to whichever test ran before
    run = mlflow.search_runs(
        experiment_names=["segaudit"],
        filter_string="tags.`segaudit.run_id` = 'gate-x'",
    ).iloc[0]
    assert run["tags.segaudit.diagnostics.verdict"] == "SPATIAL_SHORTCUT" and run["metrics.evidence/prior"] == 31.5
    assert run["metrics.final/miou"] == 40.0
    plots = mlflow.MlflowClient(tracking_uri).list_artifacts(run["run_id"], "plots")
    assert [a.path for a in plots] == ["plots/evidence_gate-x.png"]  # the record's PNGs


def test_mlflow_by_default_keeps_everything_in_the_runs_folder(tiny, runs_root, tmp_path, monkeypatch):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = runner.invoke(app, ["prior", *tiny, "logger=mlflow", "run_id=p"])
    assert result.exit_code == 0, result.output
    assert (runs_root / "mlflow.db").is_file() and any((runs_root / "mlartifacts").rglob("record.json"))
    assert not list(cwd.iterdir())  # no ./mlruns, no ./mlflow.db


def test_a_resumed_run_continues_its_mlflow_run(runs_root, tracking_uri):
    cfg = compose([f"paths.runs={runs_root}"])
    record = {"run_id": "again", "phase": "train", "status": "running", "train_log": [], "history": []}
    first, second = MLflowTracker(tracking_uri), MLflowTracker(tracking_uri)
    first.open(runs_root, record, cfg)
    second.open(runs_root, record, cfg)
    assert first.run_id == second.run_id and not first.broken


def test_a_broken_tracking_uri_warns_once_and_the_run_completes(tiny, runs_root):
    result = _train(tiny, "logger=mlflow", "logger.tracking_uri=http://127.0.0.1:9", "run_id=dead")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "logger=mlflow" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:") and "the run goes on" in warnings[0]
    assert "Traceback" not in result.output
    record = _record(runs_root, "dead")
    assert record["status"] == "completed" and record["step"] == 4 and len(record["history"]) == 4


def test_a_missing_extra_is_one_line_before_a_run_exists(tiny, runs_root):
    result = runner.invoke(app, ["train", *tiny, "logger=tensorboard", "logger.requires=segaudit_no_such_package"])
    assert result.exit_code == 2, result.output
    assert "logger=tensorboard: the segaudit_no_such_package package is not installed" in result.stderr
    assert "pip install 'segaudit[tensorboard]'" in result.stderr and not runs_root.exists()


@pytest.mark.parametrize(
    "setting, message",
    [
        ("logger.subdir=../outside", "logger.subdir='../outside': expected one folder name"),
        ("+logger.colour=red", "logger=tensorboard: "),
    ],
)
def test_a_bad_logger_setting_is_one_line_before_a_run_exists(tiny, runs_root, setting, message):
    result = runner.invoke(app, ["train", *tiny, "logger=tensorboard", setting])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not runs_root.exists()


def test_only_segaudit_trackers_are_built_from_a_config(runs_root):
    cfg = compose([f"paths.runs={runs_root}", "logger=tensorboard", "logger._target_=os.system"])
    with pytest.raises(ConfigError, match="refusing to build 'os.system'"):
        build_tracker(cfg)
    with pytest.raises(ConfigError, match="one folder name"):
        TensorBoardTracker(subdir="../outside")


def test_flat_params_spell_every_leaf():
    assert flat_params({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "None",
        "e": "{}",
    }


def test_tensorboard_logs_a_cityscapes_size_picture_and_the_final_numbers(runs_root):
    """A 1024x2048 PNG in a record (what a Cityscapes-size audit draws) lands whole."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = runs_root / "audit-cs"
    run_dir.mkdir(parents=True)
    picture = run_dir / "samples_audit-cs.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1024, 2048, 3), dtype=np.uint8)).save(picture)
    record = {
        "run_id": "audit-cs",
        "phase": "audit",
        "status": "completed",
        "step": 0,
        "plots": [str(picture)],
        "metrics": {"miou": 41.5, "macc": 50.0, "aacc": 90.0},
        "audit": {"content_gain": 9.5},
    }
    publish(compose([f"paths.runs={runs_root}", "logger=tensorboard"]), run_dir, record)
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    (image,) = events.Images("samples_audit-cs")
    assert (image.width, image.height) == (2048, 1024)
    assert events.Scalars("final/miou")[0].value == pytest.approx(41.5)
    assert events.Scalars("audit/content_gain")[0].value == pytest.approx(9.5)
