"""Bad input in a real `python -m segaudit.cli` process: one line, exit code 2, no
traceback, nothing written (`slow`; the same refusals run in-process in tests/cli)."""

import subprocess
import sys

import pytest

from scenes import with_dataset_yaml


# --------------------------------------------------------------------------- bad input, as users meet it
def _subprocess(*args) -> subprocess.CompletedProcess:
    """The installed CLI in its own process, as a user meets it."""
    return subprocess.run([sys.executable, "-m", "segaudit.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # the refusals below run in-process; test_cli covers a fresh interpreter too
def test_refusals_in_a_real_process(tiny, synth_root, runs_root, tmp_path):
    """A few of the refusals below once more through a fresh interpreter: exit code, one
    line, no traceback, nothing written."""
    root = with_dataset_yaml(synth_root, tmp_path / "bad-data", b"- a list\n")
    for args, message in (
        (["train", *tiny, "train.iters=0"], "train.iters=0"),
        (["train", *tiny, f"dataset.root={root}"], "found a list"),
        (["train", *tiny, "run_id=../escaped"], "run_id='../escaped'"),
    ):
        done = _subprocess(*args)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not runs_root.exists() or list(runs_root.iterdir()) == []
    assert not (tmp_path / "escaped").exists()
