"""Training in real processes: a SIGKILLed run resumes to the same end, and torchrun with
two CPU processes writes one record (`slow`)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from segaudit.core.config import compose
from segaudit.runs.records import read_record


@pytest.mark.slow  # resume is tested in-process by test_interrupted_run_resumes_to_the_same_result
def test_sigkilled_subprocess_resumes_and_completes(tiny, runs_root):
    args = [
        sys.executable,
        "-m",
        "segaudit.cli",
        "train",
        *tiny,
        "train.iters=40",
        "train.ckpt_every=3",
        "run_id=victim",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record_path = runs_root / "victim" / "record.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if record_path.exists() and json.loads(record_path.read_text())["step"] >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = json.loads(record_path.read_text())
    assert killed["status"] == "running" and 3 <= killed["step"] < 40

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "segaudit.cli",
            "train",
            f"paths.runs={runs_root}",
            "resume=victim",
            "train.progress=false",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    final = json.loads(record_path.read_text())
    assert final["status"] == "completed" and final["step"] == 40
    assert [p.name for p in runs_root.iterdir()] == ["victim"]  # one run, one record
    assert [h["step"] for h in final["history"]] == [40]


@pytest.mark.slow  # two torchrun processes: ~15 s
def test_ddp_two_cpu_processes_write_one_record(tiny, runs_root):
    """torchrun with 2 processes and gloo: one run directory, metrics reduced over ranks."""
    from segaudit.workflows.audit import audit

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "segaudit.cli",
            "train",
            *tiny,
            "train.iters=4",
            "device=cpu",
            "run_id=ddp",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert [p.name for p in runs_root.iterdir()] == ["ddp"]
    record = read_record(runs_root / "ddp")
    assert record["status"] == "completed" and record["step"] == 4 and record["world_size"] == 2
    assert done.stdout.count("segaudit run") == 1  # only rank 0 reports
    # Each rank scored half of val; the summed confusion matrix equals one process scoring all.
    single = audit(compose(tiny), "ddp")
    assert single["audit"]["miou"]["real"] == pytest.approx(record["metrics"]["miou"])
