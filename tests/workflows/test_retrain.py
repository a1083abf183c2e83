"""`segaudit retrain` sweeps: planning, idempotency, kill-and-rerun, submitit, gate, init-from."""

import torch
from typer.testing import CliRunner

from scenes import data_overrides
from segaudit.cli import app
from segaudit.core.config import compose
from segaudit.models.checkpoints import load_checkpoint
from segaudit.runs.records import load_table, write_record
from segaudit.train.engine import train
from segaudit.workflows.retrain import plan

runner = CliRunner()


def test_plan_is_a_stable_cartesian_product():
    a = plan(2, ["unet", "pspnet"], ["synthetic"], [0, 1], ["train.iters=30"], "/r")
    b = plan(2, ["unet", "pspnet"], ["synthetic"], [0, 1], ["train.iters=30"], "/r")
    assert [r.run_id for r in a] == [r.run_id for r in b] and len(a) == 4
    assert a[0].run_id.startswith("retrain-tier2-unet-synthetic-s0-")
    assert "loss=tier2" in a[0].overrides and "strategy=tier2" in a[0].overrides
    other = plan(2, ["unet"], ["synthetic"], [0], ["train.iters=31"], "/r")
    assert other[0].run_id != a[0].run_id  # other settings, other runs


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
        *data_overrides(tiny),
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
            *data_overrides(tiny),
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
