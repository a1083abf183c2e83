"""Verdicts and the decision gate over a grid of numbers, and `diagnose` end to end."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from segaudit.cli import app
from segaudit.config import load_group_option
from segaudit.phases import PIPELINE_FAULT, SPATIAL_SHORTCUT, HEALTHY, Evidence, decide, verdict
from segaudit.runs import load_table

DEFAULT = load_group_option("gate", "default")
SEED = load_group_option("gate", "seed")  # the default gate's values with the seed's on top


@pytest.mark.parametrize("ev,gate,expected", [
    # The measured prototype's numbers (prior 24.1, real 68.8): healthy under the default preset ...
    (Evidence(prior=24.1, real=68.8, shuffled=23.5, noise_trained=24.3, real_on_noise=14.6), DEFAULT, HEALTHY),
    # ... but the literal seed gate flags a model that keeps 14.6 on noise (>= 10).
    (Evidence(prior=24.1, real=68.8, shuffled=23.5, noise_trained=24.3, real_on_noise=14.6), SEED, SPATIAL_SHORTCUT),
    # A pairing bug: the real-trained model is the prior.
    (Evidence(prior=24.1, real=23.5, shuffled=23.0, noise_trained=24.3), DEFAULT, PIPELINE_FAULT),
    # Within the margin of the shuffled model but not of the prior.
    (Evidence(prior=10.0, real=30.0, shuffled=27.0), DEFAULT, PIPELINE_FAULT),
    (Evidence(prior=10.0, real=30.0, shuffled=26.9), DEFAULT, HEALTHY),
    # Exactly at the margin from the prior counts as a fault; just past it does not.
    (Evidence(prior=30.0, real=33.0), DEFAULT, PIPELINE_FAULT),
    (Evidence(prior=30.0, real=33.1, noise_trained=20.0), DEFAULT, HEALTHY),
    # The investigation's situation: noise-trained 32 vs real 40 (> 0.7 x 40 = 28).
    (Evidence(prior=31.0, real=40.0, shuffled=30.0, noise_trained=32.2), DEFAULT, SPATIAL_SHORTCUT),
    # Noise training skipped: the prior stands in for it.
    (Evidence(prior=31.0, real=40.0), DEFAULT, SPATIAL_SHORTCUT),
    (Evidence(prior=20.0, real=40.0), DEFAULT, HEALTHY),
    # Real-trained model on noise: relative rule (default) and absolute rule (seed).
    (Evidence(prior=10.0, real=40.0, real_on_noise=20.1), DEFAULT, SPATIAL_SHORTCUT),
    (Evidence(prior=10.0, real=40.0, real_on_noise=19.9), DEFAULT, HEALTHY),
    (Evidence(prior=10.0, real=40.0, real_on_noise=9.99), SEED, HEALTHY),
    (Evidence(prior=10.0, real=40.0, real_on_noise=10.0), SEED, SPATIAL_SHORTCUT),
])
def test_verdict_grid(ev, gate, expected):
    name, reasons = verdict(ev, gate)
    assert name == expected and reasons


@pytest.mark.parametrize("tier1,expected", [
    (29.99, "inconclusive"), (30.0, "2A"), (32.5, "2A"), (35.0, "2A"), (35.01, "inconclusive"),
    (39.99, "inconclusive"), (40.0, "2B"), (55.0, "2B"),
])
def test_seed_gate_boundaries(tier1, expected):
    assert decide(Evidence(prior=32.0, real=40.0, tier1=tier1), SEED)[0] == expected


@pytest.mark.parametrize("tier1,expected", [
    # t = (tier1 - 32) / (40 - 32): the seed thresholds map to t = -0.25, 0.375 (2A) and
    # "stays at 40+" to t = 1.0, relaxed to 0.9 (39.2 here) in the default preset.
    (29.99, "inconclusive"), (30.0, "2A"), (35.0, "2A"), (35.1, "inconclusive"),
    (39.1, "inconclusive"), (39.2, "2B"), (40.0, "2B"),
])
def test_relative_gate_reproduces_the_seed_numbers(tier1, expected):
    assert decide(Evidence(prior=32.0, real=40.0, tier1=tier1), DEFAULT)[0] == expected


def test_relative_gate_scales_with_the_dataset():
    # Same positions on another dataset: prior 20, baseline 60 -> 2A in [10, 35].
    assert decide(Evidence(prior=20.0, real=60.0, tier1=35.0), DEFAULT)[0] == "2A"
    assert decide(Evidence(prior=20.0, real=60.0, tier1=60.0), DEFAULT)[0] == "2B"
    assert decide(Evidence(prior=40.0, real=39.0, tier1=38.0), DEFAULT)[0] == "inconclusive"
    assert decide(Evidence(prior=20.0, real=60.0), DEFAULT)[0] == "pending"


runner = CliRunner()


def test_diagnose_records_every_step(tiny, runs_root):
    result = runner.invoke(app, ["diagnose", *tiny, "run_id=diag"])
    gate = json.loads((runs_root / "diag" / "record.json").read_text())
    # The recorded verdict and decision are the ones the recorded evidence implies, and the
    # exit code follows the verdict.
    evidence = Evidence(**gate["evidence"])
    assert gate["verdict"] == verdict(evidence, DEFAULT)[0]
    assert gate["gate"]["decision"] == decide(evidence, DEFAULT)[0]
    assert result.exit_code == (0 if gate["verdict"] == HEALTHY else 1), result.output
    assert gate["verdict"] in result.stdout and "decision gate" in result.stdout
    table = load_table(runs_root)
    assert set(table.diagnose_id) == {"diag"}
    assert sorted(table.strategy) == sorted(["analytic_prior", "baseline", "shuffled-pairing",
                                             "noise-input", "tier1", "crossfit-1of2", "crossfit-2of2",
                                             "suspects", "diagnose"])
    assert set(gate["steps"]) == {"prior", "baseline", "shuffled", "noise", "tier1", "suspects"}
    assert gate["classes"]["line"] and len(gate["classes"]["rows"]) == 8 and "consistent" in gate["split"]
    baseline = table[table.strategy == "baseline"].iloc[0]
    assert baseline.noise_miou == pytest.approx(gate["evidence"]["real_on_noise"])
    assert table[table.strategy == "tier1"].iloc[0].loss == "tier1"
    again = runner.invoke(app, ["report", "--diagnose", "diag", f"paths.runs={runs_root}"])
    assert again.exit_code == 0 and gate["verdict"] in again.stdout
    missing = runner.invoke(app, ["report", "--diagnose", "nope", f"paths.runs={runs_root}"])
    assert missing.exit_code == 2 and "no diagnose with that id" in missing.stderr


def test_no_noise_train_skips_it(tiny, runs_root):
    result = runner.invoke(app, ["diagnose", "--no-noise-train", "--no-suspects", *tiny, "diagnose.tier1=false",
                                 "run_id=quick"])
    gate = json.loads((runs_root / "quick" / "record.json").read_text())
    assert gate["evidence"]["noise_trained"] is None and gate["gate"]["decision"] == "pending"
    assert result.exit_code == (0 if gate["verdict"] == HEALTHY else 1), result.output
    table = load_table(runs_root)
    assert "noise-input" not in set(table.strategy)
    assert "noise training skipped" in result.stdout
    assert "pending" in result.stdout  # no tier-1 run, no decision
    assert "pair scoring skipped" in result.stdout and "suspects" not in gate["steps"]


def _scenes(tmp_path_factory):
    from segaudit.data.synthetic import SynthSpec, write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("scenes"), SynthSpec(n_train=200, n_val=50, size=32))


@pytest.mark.slow
def test_diagnose_healthy_then_pipeline_fault(tmp_path, tmp_path_factory):
    """The acceptance path: healthy data exits 0; masks shuffled on disk exit 1 with PIPELINE_FAULT."""
    root = _scenes(tmp_path_factory)
    common = ["dataset=folder", "dataset.transform.crop=[32,32]", "dataset.cache_in_memory=true",
              "train.iters=150", "train.progress=false", "diagnose.tier1=false",
              f"paths.runs={tmp_path / 'runs'}"]
    healthy = runner.invoke(app, ["diagnose", "--no-noise-train", f"dataset.root={root}", *common])
    assert healthy.exit_code == 0 and "HEALTHY" in healthy.stdout, healthy.output

    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    masks = sorted((broken / "masks" / "train").glob("*.png"))
    contents = [p.read_bytes() for p in masks]
    for path, content in zip(masks, np.roll(np.array(contents, dtype=object), 1)):
        path.write_bytes(content)
    fault = runner.invoke(app, ["diagnose", "--no-noise-train", f"dataset.root={broken}", *common])
    assert fault.exit_code == 1 and "PIPELINE_FAULT" in fault.stdout, fault.output


@pytest.mark.slow
def test_noise_trained_model_learns_the_prior(tmp_path, tmp_path_factory):
    from segaudit.config import compose
    from segaudit.engine import train
    from segaudit.prior import run_prior

    root = _scenes(tmp_path_factory)
    overrides = ["dataset=folder", f"dataset.root={root}", "dataset.transform.crop=[32,32]",
                 "dataset.cache_in_memory=true", "train.progress=false", f"paths.runs={tmp_path}"]
    prior = run_prior(compose(overrides))["metrics"]["miou"]
    noise = train(compose(overrides + ["train.iters=300", "train_condition=noise",
                                       "eval_condition=noise"]))["metrics"]["miou"]
    assert abs(noise - prior) < 4.0, (noise, prior)
