"""`segaudit retrain` sweeps: planning, idempotency, kill-and-rerun, submitit, gate, init-from."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from segaudit.cli import app
from segaudit.core.config import compose
from segaudit.models.checkpoints import load_checkpoint
from segaudit.runs.records import load_table, write_record
from segaudit.train.engine import train
from segaudit.workflows.retrain import plan

runner = CliRunner()


def _data_overrides(tiny):
    return [o for o in tiny if o.startswith(("dataset.", "train.batch", "train.eval_batch"))]


def test_plan_is_a_stable_cartesian_product():
    a = plan(2, ["unet", "pspnet"], ["synthetic"], [0, 1], ["train.iters=30"], "/r")
    b = plan(2, ["unet", "pspnet"], ["synthetic"], [0, 1], ["train.iters=30"], "/r")
    assert [r.run_id for r in a] == [r.run_id for r in b] and len(a) == 4
    assert a[0].run_id.startswith("retrain-tier2-unet-synthetic-s0-")
    assert "loss=tier2" in a[0].overrides and "strategy=tier2" in a[0].overrides
    other = plan(2, ["unet"], ["synthetic"], [0], ["train.iters=31"], "/r")
    assert other[0].run_id != a[0].run_id  # other settings, other runs


@pytest.mark.slow  # two parallel processes twice: ~25 s
def test_sweep_with_jobs_then_again_skips(tiny, runs_root):
    args = [
        "retrain",
        "retrain.tier=2",
        "retrain.models=[unet,pspnet]",
        "retrain.datasets=[folder]",
        "retrain.seeds=[0,1]",
        "retrain.jobs=2",
        *_data_overrides(tiny),
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
        *_data_overrides(tiny),
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
            *_data_overrides(tiny),
            "train.iters=2",
            f"paths.runs={runs_root}",
        ],
    )
    assert result.exit_code == 0, result.output
    table = load_table(runs_root)
    assert len(table) == 2 and set(table.status) == {"completed"}
    assert (runs_root / "_submitit").is_dir()


def test_from_gate_follows_the_decision(tiny, runs_root):
    for name, decision in (("g2b", "2B"), ("gpending", "pending")):
        (runs_root / name).mkdir(parents=True)
        write_record(
            runs_root / name,
            {
                "schema": 1,
                "run_id": name,
                "phase": "gate",
                "status": "completed",
                "verdict": "HEALTHY",
                "evidence": {},
                "gate": {"decision": decision, "why": "test"},
            },
        )
    common = [
        "retrain.models=[unet]",
        "retrain.datasets=[folder]",
        *_data_overrides(tiny),
        "train.iters=1",
        f"paths.runs={runs_root}",
    ]
    result = runner.invoke(app, ["retrain", "retrain.from_gate=g2b", *common])
    assert result.exit_code == 0, result.output
    assert load_table(runs_root).dropna(subset=["loss"]).loss.tolist() == ["tier2"]
    refused = runner.invoke(app, ["retrain", "retrain.from_gate=gpending", *common])
    assert refused.exit_code == 2 and "decided 'pending'" in refused.stderr
    assert runner.invoke(app, ["retrain", *common]).exit_code == 2  # neither retrain.tier nor retrain.from_gate


def test_init_from_with_frozen_encoder(tiny, runs_root):
    base = train(compose(tiny + ["model=unet", "run_id=base"]))
    start = load_checkpoint(runs_root / base["run_id"] / "checkpoint.pt")["model"]
    result = runner.invoke(
        app,
        [
            "retrain",
            "retrain.tier=2",
            "retrain.models=[unet]",
            "retrain.datasets=[folder]",
            f"retrain.init_from={runs_root / 'base' / 'checkpoint.pt'}",
            "retrain.freeze_encoder=true",
            *_data_overrides(tiny),
            "train.iters=2",
            f"paths.runs={runs_root}",
        ],
    )
    assert result.exit_code == 0, result.output
    run_id = next(r for r in load_table(runs_root).run_id if r.startswith("retrain"))
    after = load_checkpoint(runs_root / run_id / "checkpoint.pt")["model"]
    encoder = [k for k in start if k.startswith("encoder.")]
    assert any("running_mean" in k for k in encoder)  # BatchNorm statistics are part of it
    changed = [k for k in encoder if not torch.equal(start[k], after[f"net.{k}"])]
    assert changed == []  # weights, running statistics and batch counters all stay as they were
    assert not torch.equal(start["segmentation_head.0.weight"], after["net.segmentation_head.0.weight"])
