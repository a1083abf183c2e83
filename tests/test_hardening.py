"""Files from strangers run no code, run ids stay inside the runs folder."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import segmentation_models_pytorch as smp
import torch
import yaml
from typer.testing import CliRunner

from segaudit.cli import app
from segaudit.config import SMP_ARCHITECTURES, compose, unsafe_targets
from segaudit.engine import train
from segaudit.errors import ConfigError
from segaudit.runs import run_lock

runner = CliRunner()


def _write_text_payload(target) -> dict:
    """What a hostile config nests to make Hydra write a file: Path(target).write_text(...)."""
    return {"_target_": "pathlib.Path.write_text",
            "_args_": [{"_target_": "pathlib.Path", "_args_": [str(target)]}, "echo owned"]}


@pytest.fixture
def trained(tiny, runs_root):
    train(compose(tiny + ["model=unet", "run_id=honest"]))
    return runs_root / "honest"


@pytest.mark.parametrize("command", ["validate", "audit"])
def test_a_checkpoint_config_cannot_run_code(trained, tiny, tmp_path, command):
    ckpt = torch.load(trained / "checkpoint.pt", weights_only=True)
    planted = tmp_path / "x.sh"
    ckpt["config"]["model"]["net"]["decoder_channels"] = _write_text_payload(planted)
    torch.save(ckpt, tmp_path / "evil.pt")
    result = runner.invoke(app, [command, str(tmp_path / "evil.pt"), *tiny])
    assert result.exit_code == 2, result.output
    assert "refusing to build 'pathlib.Path" in result.stderr and "evil.pt" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not planted.exists()


def test_resume_refuses_a_run_config_that_builds_other_things(trained, tiny, runs_root, tmp_path):
    copy = runs_root / "edited"
    shutil.copytree(trained, copy)
    saved = yaml.safe_load((copy / "config.yaml").read_text())
    planted = tmp_path / "y.sh"
    saved["optim"] = {**saved["optim"], "_target_": "shutil.copyfile"}
    saved["dataset"]["label_map"] = _write_text_payload(planted)
    (copy / "config.yaml").write_text(yaml.safe_dump(saved))
    record_before = (copy / "record.json").read_bytes()
    result = runner.invoke(app, ["train", f"paths.runs={runs_root}", "resume=edited"])
    assert result.exit_code == 2 and "refusing to build" in result.stderr, result.output
    assert not planted.exists() and (copy / "record.json").read_bytes() == record_before


def test_the_shipped_configs_build_only_allowed_targets():
    for model in ("deeplabv3plus", "pspnet", "segformer", "unet"):
        for loss in ("ce", "tier1", "tier2", "tier3"):
            cfg = compose([f"model={model}", f"loss={loss}", "dataset=cityscapes", "optim=sgd"])
            assert unsafe_targets(cfg) == []
    exported = sorted(n for n in dir(smp) if isinstance(getattr(smp, n), type)
                      and issubclass(getattr(smp, n), smp.base.SegmentationModel)
                      and getattr(smp, n) is not smp.base.SegmentationModel)
    assert sorted(SMP_ARCHITECTURES) == exported  # a new smp architecture is added on purpose


@pytest.mark.parametrize("run_id", ["../escaped", "/tmp/absolute-run", "a/b", ".", ".."])
def test_unsafe_run_ids_are_refused_before_anything_is_written(tiny, runs_root, tmp_path, run_id):
    result = runner.invoke(app, ["train", *tiny, f"run_id={run_id}"])
    assert result.exit_code == 2 and "run_id=" in result.stderr, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "escaped").exists() and not (runs_root / "a").exists()
    assert not runs_root.exists() or list(runs_root.iterdir()) == []


def test_a_repeated_run_id_is_one_line(trained, tiny):
    result = runner.invoke(app, ["train", *tiny, "model=unet", "run_id=honest"])
    assert result.exit_code == 2 and "a run with that id exists" in result.stderr
    assert "resume=honest" in result.stderr and "Traceback" not in result.output


def test_sigterm_marks_the_run_interrupted_with_its_resume_command(tiny, runs_root):
    args = [sys.executable, "-m", "segaudit.cli", "train", *tiny, "train.iters=400",
            "train.ckpt_every=2", "run_id=termed"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    record_path = runs_root / "termed" / "record.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (
            record_path.exists() and json.loads(record_path.read_text())["step"] >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in stderr
    record = json.loads(record_path.read_text())
    assert record["status"] == "failed" and "segaudit train resume=termed" in record["error"]
    assert 2 <= record["step"] < 400


def test_resume_removes_stale_temp_files_and_a_second_trainer_is_refused(trained, runs_root):
    stale = trained / ".checkpoint.pt.k1ll3d"
    stale.write_bytes(b"half a checkpoint")
    record = json.loads((trained / "record.json").read_text())
    record["status"] = "failed"  # as a killed run leaves it
    (trained / "record.json").write_text(json.dumps(record))
    with run_lock(trained):  # another process training this run right now
        with pytest.raises(ConfigError, match="being trained by another process"):
            train(compose([f"paths.runs={runs_root}", "resume=honest"]))
        assert stale.exists()  # a live writer's temp file is not touched
    train(compose([f"paths.runs={runs_root}", "resume=honest"]))
    assert not stale.exists()
    assert sorted(p.name for p in trained.iterdir() if p.name.startswith(".")) == [".lock"]
