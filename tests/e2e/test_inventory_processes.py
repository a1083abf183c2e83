"""`segaudit audit inventory` in real processes: killed midway and rerun to one record per
model, and the SLURM launcher's job array through submitit's local executor (`slow`)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from expected import audit_records
from segaudit.cli import app
from segaudit.workflows.inventory import plan_inventory

runner = CliRunner()


@pytest.mark.slow  # a SIGKILLed subprocess sweep: ~45 s
def test_killed_midway_then_rerun_gives_one_record_per_model(inventory):
    base, shared = inventory
    command = [
        str(Path(sys.executable).with_name("segaudit")),
        "audit",
        "inventory",
        str(base / "models.csv"),
        "--jobs",
        "2",
        *shared,
    ]
    started = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and started.poll() is None:
        if any(r["status"] == "completed" for r in audit_records(base / "runs")):
            break
        time.sleep(0.2)
    os.killpg(started.pid, signal.SIGKILL)  # the whole group, as a cluster or Ctrl-\ would
    started.wait()
    assert len([r for r in audit_records(base / "runs") if r["status"] == "completed"]) < 6

    rerun = runner.invoke(app, ["audit", "inventory", str(base / "models.csv"), "--jobs", "2", *shared])
    assert rerun.exit_code == 1, rerun.output  # two rows fail (and untrained models raise red flags)
    records = audit_records(base / "runs")
    assert len(records) == 6 and all(r["status"] == "completed" for r in records)
    planned = [row.run.run_id for row in plan_inventory(base / "models.csv", []) if row.run is not None]
    assert len(planned) == 7  # the missing file has no id; the five-class model fails when loaded
    said = " ".join(rerun.stdout.split())  # the console wraps a long tmp path at 100 columns
    assert "row 7 (models/gone)" in said and "no such model file" in said
    assert "row 8 (models/five)" in said and "expected (N, 8, H, W)" in said
    assert {r["strategy"] for r in records} == {"a", "b"} and {r["model"] for r in records} == {"unet"}

    again = runner.invoke(app, ["audit", "inventory", str(base / "models.csv"), *shared])
    assert again.stdout.count("skipped") == 6 and len(audit_records(base / "runs")) == 6

    scoped = runner.invoke(app, ["scope", "--phase", "audit", "--format", "json", *shared])
    result = json.loads(scoped.stdout)
    table = pd.DataFrame(
        {"strategy": [r["strategy"] for r in records], "miou": [r["metrics"]["miou"] for r in records]}
    )
    expected = table.groupby("strategy")["miou"].agg(["count", "mean", "std"])
    groups = {g["name"]: g for g in result["groupings"]["strategy"]["groups"]}
    for name, row in expected.iterrows():
        assert groups[name]["count"] == row["count"]
        assert groups[name]["mean"] == pytest.approx(row["mean"])
        assert groups[name]["std"] == pytest.approx(row["std"])


@pytest.mark.slow  # retrain's test covers the submitit path in the fast suite
def test_the_slurm_launcher_runs_an_inventory_as_a_job_array(inventory, tmp_path):
    base, shared = inventory
    rows = pd.read_csv(base / "models.csv").head(2)
    rows["source"] = [str(base / s) for s in rows.source]
    rows.to_csv(tmp_path / "two.csv", index=False)
    runs = tmp_path / "runs"
    settings = [s for s in shared if not s.startswith("paths.runs=")] + [f"paths.runs={runs}"]
    done = runner.invoke(
        app,
        ["audit", "inventory", str(tmp_path / "two.csv"), "--launcher", "slurm", "launcher.cluster=local", *settings],
    )
    assert done.exit_code == 1, done.output  # untrained models: red flags
    assert len(audit_records(runs)) == 2 and (runs / "_submitit").is_dir()
