"""Shared fixtures: a tiny synthetic folder dataset and overrides for few-iteration runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from segaudit.data.synthetic import SynthSpec, write_cityscapes_layout, write_synthetic

pytest_plugins = ["trained"]  # shared trained fixtures: tests/trained.py

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: one thread each, not two each competing.
    torch.set_num_threads(1)

# The modules that take longest, longest first. `make test` hands whole modules to its
# workers in collection order (--dist loadfile --no-loadscope-reorder), so that the
# workers end together instead of one finishing a long module alone.
SLOWEST_FIRST = (
    "test_diagnose_scenes.py",
    "test_forensics.py",
    "test_html.py",
    "test_sources.py",
    "test_real_sizes.py",
    "test_diagnose.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its order


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
        "dataset=folder",
        f"dataset.root={synth_root}",
        "dataset.transform.crop=[32,32]",
        "dataset.cache_in_memory=true",
        "train.iters=2",
        "train.batch_size=2",
        "train.eval_batch_size=8",
        "train.progress=false",
        f"paths.runs={runs_root}",
        f"paths.cache={tmp_path / 'cache'}",
    ]


# --------------------------------------------------------------------------- Cityscapes size
@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    """The official layout at the real 1024x2048, 34 raw label ids."""
    return write_cityscapes_layout(tmp_path_factory.mktemp("cityscapes"), {"train": 3, "val": 2})
