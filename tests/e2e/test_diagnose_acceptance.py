"""The acceptance path of `segaudit diagnose` at the default budget: healthy scenes exit 0,
masks shuffled on disk exit 1 with PIPELINE_FAULT; a noise-trained model learns the prior (`slow`)."""

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from segaudit.cli import app
from segaudit.core.config import compose

runner = CliRunner()


def _scenes(tmp_path_factory):
    from segaudit.data.synthetic import SynthSpec, write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("scenes"), SynthSpec(n_train=200, n_val=50, size=32))


@pytest.mark.slow
def test_diagnose_healthy_then_pipeline_fault(tmp_path, tmp_path_factory):
    """The acceptance path: healthy data exits 0; masks shuffled on disk exit 1 with PIPELINE_FAULT."""
    root = _scenes(tmp_path_factory)
    common = [
        "dataset=folder",
        "dataset.transform.crop=[32,32]",
        "dataset.cache_in_memory=true",
        "train.iters=150",
        "train.progress=false",
        "diagnose.tier1=false",
        f"paths.runs={tmp_path / 'runs'}",
    ]
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
    from segaudit.train.engine import train
    from segaudit.workflows.prior import run_prior

    root = _scenes(tmp_path_factory)
    overrides = [
        "dataset=folder",
        f"dataset.root={root}",
        "dataset.transform.crop=[32,32]",
        "dataset.cache_in_memory=true",
        "train.progress=false",
        f"paths.runs={tmp_path}",
    ]
    prior = run_prior(compose(overrides))["metrics"]["miou"]
    noise = train(compose(overrides + ["train.iters=300", "train_condition=noise", "eval_condition=noise"]))["metrics"][
        "miou"
    ]
    assert abs(noise - prior) < 4.0, (noise, prior)
