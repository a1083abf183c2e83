"""Sweeps in real processes: two parallel jobs then a rerun that skips, a SIGKILLed sweep
rerun to exactly the planned runs, and submitit's local executor (`slow`)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from scenes import data_overrides
from segaudit.cli import app
from segaudit.runs.records import load_table

runner = CliRunner()


@pytest.mark.slow  # two parallel processes twice: ~25 s
def test_sweep_with_jobs_then_again_skips(tiny, runs_root):
    args = [
        "retrain",
        "retrain.tier=2",
        "retrain.models=[unet,pspnet]",
        "retrain.datasets=[folder]",
        "retrain.seeds=[0,1]",
        "retrain.jobs=2",
        *data_overrides(tiny),
        "train.iters=2",
        f"paths.runs={runs_root}",
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    table = load_table(runs_root)
    assert len(table) == 4 and set(table.status) == {"completed"} and set(table.phase) == {"retrain"}
    assert set(table.strategy) == {"tier2"} and set(table.loss) == {"tier2"}
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "4 were already done" in again.stdout
    assert len(load_table(runs_root)) == 4


@pytest.mark.slow  # the same launcher's kill-and-rerun is tested fast by test_inventory
def test_killed_sweep_rerun_ends_with_exactly_the_planned_runs(tiny, runs_root):
    args = [
        sys.executable,
        "-m",
        "segaudit.cli",
        "retrain",
        "retrain.tier=1",
        "retrain.models=[unet]",
        "retrain.datasets=[folder]",
        "retrain.seeds=[0,1]",
        "retrain.jobs=2",
        *data_overrides(tiny),
        "train.iters=24",
        "train.ckpt_every=4",
        f"paths.runs={runs_root}",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        records = list(runs_root.glob("*/record.json")) if runs_root.exists() else []
        if records and any(json.loads(p.read_text())["step"] >= 4 for p in records):
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker processes
    proc.wait()
    assert not all(json.loads(p.read_text())["status"] == "completed" for p in runs_root.glob("*/record.json"))
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = load_table(runs_root)
    assert len(table) == 2 and set(table.status) == {"completed"} and set(table.step) == {24}


@pytest.mark.slow
def test_submitit_local_executor(tiny, runs_root):
    result = runner.invoke(
        app,
        [
            "retrain",
            "retrain.tier=1",
            "retrain.models=[unet]",
            "retrain.datasets=[folder]",
            "retrain.seeds=[0,1]",
            "launcher=slurm",
            "launcher.cluster=local",
            *data_overrides(tiny),
            "train.iters=2",
            f"paths.runs={runs_root}",
        ],
    )
    assert result.exit_code == 0, result.output
    table = load_table(runs_root)
    assert len(table) == 2 and set(table.status) == {"completed"}
    assert (runs_root / "_submitit").is_dir()
