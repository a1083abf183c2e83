"""`segaudit audit --inventory`: many models, killed midway and rerun, bad rows alone."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import segmentation_models_pytorch as smp
import torch
from typer.testing import CliRunner

from expected import audit_exit, read
from segaudit import runs
from segaudit.cli import app
from segaudit.workflows.inventory import content_hash, plan_inventory

runner = CliRunner()


@pytest.fixture(scope="module")
def inventory(tmp_path_factory, synth_root):
    """Six smp folders (two strategies), a missing file and a five-class model."""
    base = tmp_path_factory.mktemp("inventory")
    rows = []
    for index in range(6):
        torch.manual_seed(index)
        smp.Unet("resnet18", encoder_weights=None, classes=8).save_pretrained(base / "models" / f"m{index}")
        rows.append(
            {
                "source": f"models/m{index}",
                "strategy": "ab"[index % 2],
                "model": "unet",
                "dataset": "folder",
                "root": str(synth_root),
            }
        )
    smp.Unet("resnet18", encoder_weights=None, classes=5).save_pretrained(base / "models" / "five")
    rows += [
        {"source": "models/gone", "strategy": "a", "model": "unet", "dataset": "folder", "root": str(synth_root)},
        {"source": "models/five", "strategy": "a", "model": "unet", "dataset": "folder", "root": str(synth_root)},
    ]
    pd.DataFrame(rows).to_csv(base / "models.csv", index=False)
    shared = [
        f"paths.runs={base / 'runs'}",
        f"paths.cache={base / 'cache'}",
        "train.eval_batch_size=8",
        "dataset.cache_in_memory=true",
        "audit.probe=false",
    ]
    return base, shared


def _audit_records(runs: Path) -> list[dict]:
    records = [json.loads(p.read_text()) for p in runs.glob("*/record.json")]
    return [r for r in records if r["phase"] == "audit"]


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
        if any(r["status"] == "completed" for r in _audit_records(base / "runs")):
            break
        time.sleep(0.2)
    os.killpg(started.pid, signal.SIGKILL)  # the whole group, as a cluster or Ctrl-\ would
    started.wait()
    assert len([r for r in _audit_records(base / "runs") if r["status"] == "completed"]) < 6

    rerun = runner.invoke(app, ["audit", "inventory", str(base / "models.csv"), "--jobs", "2", *shared])
    assert rerun.exit_code == 1, rerun.output  # two rows fail (and untrained models raise red flags)
    records = _audit_records(base / "runs")
    assert len(records) == 6 and all(r["status"] == "completed" for r in records)
    planned = [row.run.run_id for row in plan_inventory(base / "models.csv", []) if row.run is not None]
    assert len(planned) == 7  # the missing file has no id; the five-class model fails when loaded
    assert "row 7 (models/gone)" in rerun.stdout and "no such model file" in rerun.stdout
    assert "row 8 (models/five)" in rerun.stdout and "expected (N, 8, H, W)" in rerun.stdout
    assert {r["strategy"] for r in records} == {"a", "b"} and {r["model"] for r in records} == {"unet"}

    again = runner.invoke(app, ["audit", "inventory", str(base / "models.csv"), *shared])
    assert again.stdout.count("skipped") == 6 and len(_audit_records(base / "runs")) == 6

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


def test_the_file_itself_is_checked_before_anything_runs(tmp_path):
    (tmp_path / "bad.csv").write_text("source,colour\nx,red\n")
    done = runner.invoke(app, ["audit", "inventory", str(tmp_path / "bad.csv"), f"paths.runs={tmp_path / 'runs'}"])
    assert done.exit_code == 2 and "unknown column 'colour'" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_content_hash_follows_the_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"1")
    first = content_hash(tmp_path / "a")
    (tmp_path / "a" / "w.bin").write_bytes(b"2")
    assert content_hash(tmp_path / "a") != first


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
    assert len(_audit_records(runs)) == 2 and (runs / "_submitit").is_dir()


def test_a_factory_row_needs_the_commands_trust(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"")
    (tmp_path / "inv.csv").write_text("source,factory\nw.safetensors,evil.module:build\n")
    [row] = plan_inventory(tmp_path / "inv.csv", [])
    assert row.run is None and "--trust-model" in row.error
    [row] = plan_inventory(tmp_path / "inv.csv", [], trusted=True)
    assert row.error is None and "source.factory='evil.module:build'" in row.run.overrides


def test_a_row_another_process_is_auditing_is_left_to_it(inventory, tmp_path):
    """Two inventories at once on one runs folder: a row whose claim another process holds
    is reported 'in progress elsewhere' (not failed), and its unfinished folder is not
    removed; once the claim is free the same command audits it."""
    base, shared = inventory
    csv = tmp_path / "one.csv"
    pd.read_csv(base / "models.csv").iloc[:1].assign(source=str(base / "models" / "m0")).to_csv(csv, index=False)
    shared = [o for o in shared if not o.startswith("paths.runs=")] + [f"paths.runs={tmp_path / 'runs'}"]
    first = runner.invoke(app, ["audit", "inventory", str(csv), *shared])
    (unfinished,) = [p.parent for p in (tmp_path / "runs").glob("*/record.json")]
    run_id = unfinished.name
    assert first.exit_code == audit_exit(read(tmp_path / "runs", run_id)), first.output
    (unfinished / "record.json").unlink()  # as a process that is still auditing it would leave it
    (unfinished / "marker").write_text("the other process's files")
    with runs.claim(tmp_path / "runs", run_id) as mine:
        assert mine
        busy = runner.invoke(app, ["audit", "inventory", str(csv), *shared])
        assert busy.exit_code == 0, busy.output
        assert "in progress elsewhere" in busy.stdout and "being audited by another process" in busy.stdout
        assert "failed" not in busy.stdout and (unfinished / "marker").is_file()
    done = runner.invoke(app, ["audit", "inventory", str(csv), *shared])
    assert "1 of 1 rows audited" in done.stdout and not (unfinished / "marker").exists()
    assert json.loads((unfinished / "record.json").read_text())["status"] == "completed"
