"""Shared fixtures: a tiny synthetic folder dataset and overrides for few-iteration runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from segaudit.data.synthetic import SynthSpec, write_synthetic


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """16 train + 8 val scenes of 32 px, written once per test session."""
    return write_synthetic(tmp_path_factory.mktemp("synth"), SynthSpec(n_train=16, n_val=8, size=32))


@pytest.fixture
def runs_root(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def tiny(synth_root, runs_root, tmp_path) -> list[str]:
    """Overrides for a seconds-long run on the tiny dataset."""
    return [
        "dataset=folder", f"dataset.root={synth_root}", "dataset.transform.crop=[32,32]",
        "dataset.cache_in_memory=true", "train.iters=2", "train.batch_size=2",
        "train.eval_batch_size=8", "train.progress=false", f"paths.runs={runs_root}",
        f"paths.cache={tmp_path / 'cache'}",
    ]
