"""Files from strangers run no code, run ids stay inside the runs folder."""

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from scenes import with_dataset_yaml
from segaudit.cli import app
from segaudit.core.config import SMP_ARCHITECTURES, compose, load_group_option, unsafe_targets
from segaudit.core.errors import ConfigError
from segaudit.diagnostics.verdict import Evidence, verdict
from segaudit.runs.records import check_run_id, load_table, run_lock
from segaudit.train.engine import train

runner = CliRunner()


def _write_text_payload(target) -> dict:
    """What a hostile config nests to make Hydra write a file: Path(target).write_text(...)."""
    return {
        "_target_": "pathlib.Path.write_text",
        "_args_": [{"_target_": "pathlib.Path", "_args_": [str(target)]}, "echo owned"],
    }


@pytest.fixture
def trained(tiny, runs_root):
    train(compose(tiny + ["model=unet", "run_id=honest"]))
    return runs_root / "honest"


@pytest.mark.parametrize("command", [["validate"], ["audit", "model"]])
def test_a_checkpoint_config_cannot_run_code(trained, tiny, tmp_path, command):
    ckpt = torch.load(trained / "checkpoint.pt", weights_only=True)
    planted = tmp_path / "x.sh"
    ckpt["config"]["model"]["net"]["decoder_channels"] = _write_text_payload(planted)
    torch.save(ckpt, tmp_path / "evil.pt")
    result = runner.invoke(app, [*command, str(tmp_path / "evil.pt"), *tiny])
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
    exported = sorted(
        n
        for n in dir(smp)
        if isinstance(getattr(smp, n), type)
        and issubclass(getattr(smp, n), smp.base.SegmentationModel)
        and getattr(smp, n) is not smp.base.SegmentationModel
    )
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
    args = [
        sys.executable,
        "-m",
        "segaudit.cli",
        "train",
        *tiny,
        "train.iters=400",
        "train.ckpt_every=2",
        "run_id=termed",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    record_path = runs_root / "termed" / "record.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (record_path.exists() and json.loads(record_path.read_text())["step"] >= 2):
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


def _segaudit(*args) -> subprocess.CompletedProcess:
    """The same command in this process (a fresh interpreter costs ~7 s per case on 2 cores);
    an uncaught exception fails here as it would print a traceback there."""
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


TRAIN_REFUSALS = [
    (["train.iters=0"], "train.iters=0: expected a whole number >= 1"),
    (["train.iters=-3"], "train.iters=-3"),
    (["train.batch_size=0"], "train.batch_size=0"),
    (["optim.lr=nan"], "optim.lr=nan: expected a finite number > 0"),
    (["optim.lr=-0.1"], "optim.lr=-0.1"),
    (["train.eval_at=[1,999]"], "train.eval_at: step 999 is not within this run's 1..2"),
    (["model.encoder=resnet19"], "unknown encoder (close matches: resnet18"),
    (["run_id=../escaped"], "run_id='../escaped': use one folder name"),
    (["dataset.root=/no such/folder"], "dataset.root is not a folder"),
]


@pytest.mark.parametrize("extra,message", TRAIN_REFUSALS, ids=[t[1][:24] for t in TRAIN_REFUSALS])
def test_bad_training_settings_are_one_line_and_leave_nothing(tiny, runs_root, tmp_path, extra, message):
    done = _segaudit("train", *tiny, *extra)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and message in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not runs_root.exists() or list(runs_root.iterdir()) == []
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize(
    "content,message",
    [
        (b"- num_classes\n- 8\n", "found a list"),
        (b"just text\n", "found a str"),
        (b"num_classes: eight\n", "'eight' is not a whole number"),
        (b"num_classes: 8\nclass_names: road\n", "expected a list of names"),
        (b"\xff\xfe\x00num_classes: 8\n", "not UTF-8 text"),
    ],
)
def test_a_broken_dataset_yaml_is_named(synth_root, tiny, runs_root, tmp_path, content, message):
    root = with_dataset_yaml(synth_root, tmp_path / "bad-data", content)
    done = _segaudit("train", *tiny, f"dataset.root={root}")
    assert done.returncode == 2 and message in done.stderr and "dataset.yaml" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not runs_root.exists() or list(runs_root.iterdir()) == []


def test_runs_folder_that_is_a_file(tiny, tmp_path):
    blocker = tmp_path / "runs-file"
    blocker.write_text("not a folder")
    done = _segaudit("train", *tiny, f"paths.runs={blocker}")
    assert done.returncode == 2 and "paths.runs=" in done.stderr and "not a folder" in done.stderr
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_read_only_runs_folder(tiny, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    done = _segaudit("train", *tiny, f"paths.runs={locked}")
    assert done.returncode == 2 and "not writable" in done.stderr


def test_report_and_check_refusals(trained, tiny, runs_root, tmp_path, synth_root):
    other = shutil.copytree(synth_root, tmp_path / "other-copy")
    cases = [
        (
            ["report", f"paths.runs={runs_root}", "--export", str(tmp_path / "missing" / "t.csv")],
            2,
            "folder",
            "does not exist",
        ),
        (
            ["report", "compare", "strategy", f"paths.runs={runs_root}", "--baseline", "nosuch"],
            2,
            "--baseline nosuch: no strategy group",
            "baseline",
        ),
        (["report", f"paths.runs={runs_root}", "--where", "status="], 0, "no runs match --where status=", "exist"),
        (["data", "check", *tiny, "--splits", "trian"], 2, "no split 'trian'", "train, val"),
        (
            ["train", f"paths.runs={runs_root}", "resume=honest", "train.iters=3"],
            2,
            "train.iters=3: a resumed run continues with its saved config",
            "new run",
        ),
        (["train", *tiny, "dataset.root=/my", "data"], 2, "cannot parse override 'data'", "quote the whole override"),
        (["validate", "honest", *tiny, f"dataset.root={other}"], 2, "validate measures", "--cross PRESET=ROOT"),
    ]
    for args, code, first, second in cases:
        done = _segaudit(*args)
        assert done.returncode == code, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and first in lines[0] and second in lines[0], (args, lines)
    assert sorted(p.name for p in runs_root.iterdir()) == ["honest"]
    assert not (tmp_path / "missing").exists()


def test_a_whole_pickled_model_is_refused_with_the_safe_alternative(tiny, tmp_path):
    torch.save(smp.Unet("resnet18", encoder_weights=None, classes=3), tmp_path / "whole.pt")
    done = _segaudit("audit", "model", str(tmp_path / "whole.pt"), *tiny)
    assert done.returncode == 2 and "\x1b[" not in done.stderr
    assert "torch.save(model)" in done.stderr and "model.state_dict()" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_audit_honours_a_dataset_override(trained, tiny, synth_root, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(synth_root, other)
    done = runner.invoke(app, ["audit", "model", "honest", *tiny, f"dataset.root={other}", "run_id=elsewhere"])
    assert done.exit_code == 1, done.output  # measured; a 2-iteration model raises red flags
    record = json.loads((trained.parent / "elsewhere" / "record.json").read_text())
    assert record["dataset_root"] == str(other.resolve())
    fewer = runner.invoke(
        app,
        [
            "audit",
            "model",
            "honest",
            *tiny,
            f"dataset.root={other}",
            "dataset.num_classes=5",
            "dataset.class_names=[a,b,c,d,e]",
        ],
    )
    assert fewer.exit_code == 2 and "has 5 classes, the model predicts 8" in fewer.stderr


def test_record_files_respect_the_umask(trained):
    modes = {p.name: p.stat().st_mode & 0o777 for p in trained.iterdir() if not p.name.startswith(".")}
    expected = 0o666 & ~_umask()
    assert modes["record.json"] == modes["checkpoint.pt"] == modes["config.yaml"] == expected


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_verdict_says_below_when_far_below_the_prior():
    gate = load_group_option("gate", "default")
    name, reasons = verdict(Evidence(prior=100.0, real=39.0, shuffled=20.0), gate)
    assert name == "PIPELINE_FAULT"
    assert reasons == [
        "real-trained mIoU 39.0 is 61.0 points below the analytic prior 100.0: usually "
        "train and val labels disagree (layout, label ids), the train-time augmentation "
        "breaks a fixed layout, or training did not converge"
    ]
    assert "within 3 points" in verdict(Evidence(prior=40.0, real=41.0), gate)[1][0]


# --------------------------------------------------------------------------- properties and fuzz
@given(st.text(min_size=0, max_size=40))
@settings(max_examples=300, deadline=None)
def test_run_ids_stay_one_folder_inside_the_runs_root(text):
    root = Path("/tmp/segaudit-property-root")
    try:
        accepted = check_run_id(text)
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    assert (root / accepted).parent == root and (root / accepted).resolve().parent == root.resolve()
    assert accepted not in (".", "..") and "/" not in accepted and "\x00" not in accepted


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
GOOD = {
    "schema": 1,
    "run_id": "good",
    "phase": "train",
    "status": "completed",
    "strategy": "baseline",
    "model": "unet",
    "dataset": "synthetic",
    "seed": 0,
    "started_at": "2026-01-01T00:00:00+00:00",
    "metrics": {"miou": 40.0, "macc": 50.0, "aacc": 80.0},
}


@given(
    st.one_of(
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries({k: JSON_VALUES for k in ("run_id", "phase", "status", "metrics", "seed")}).map(
            lambda v: json.dumps(v).encode()
        ),
        st.integers(1, len(json.dumps(GOOD)) - 1).map(lambda n: json.dumps({**GOOD, "run_id": "cut"}).encode()[:n]),
        st.binary(max_size=64),
    )
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_record_file_leaves_the_good_runs_listed(tmp_path, content):
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    (root / "good").mkdir()
    (root / "good" / "record.json").write_text(json.dumps(GOOD))
    (root / "other").mkdir()
    (root / "other" / "record.json").write_bytes(content)
    warnings = io.StringIO()
    with contextlib.redirect_stderr(warnings):
        table = load_table(root)
    lines = warnings.getvalue().splitlines()
    assert "good" in set(table.run_id)
    # Either the other record is a usable row, or it is skipped with exactly one warning.
    assert (len(table), len(lines)) in ((2, 0), (1, 1)), lines
    assert all("other/record.json" in line for line in lines)


def test_report_scope_and_every_format_list_the_good_runs_beside_bad_records(tmp_path):
    root = tmp_path / "runs"
    for i, strategy in enumerate(["baseline", "tier1"]):
        (root / f"good{i}").mkdir(parents=True)
        (root / f"good{i}" / "record.json").write_text(json.dumps({**GOOD, "run_id": f"good{i}", "strategy": strategy}))
    bad = {
        "null": b"null",
        "list": b"[1, 2]",
        "bytes": b"\xff\xfe\xfd",
        "cut": b'{"run_id": "x", "ph',
        "oops": json.dumps({**GOOD, "run_id": "oops", "metrics": "oops"}).encode(),
        "empty": b"{}",
    }
    for name, content in bad.items():
        (root / name).mkdir()
        (root / name / "record.json").write_bytes(content)
    for args in (
        ["report"],
        ["report", "--format", "json"],
        ["report", "--format", "csv"],
        ["report", "--format", "md"],
        ["report", "scope"],
        ["scope"],
    ):
        done = runner.invoke(app, [*args, f"paths.runs={root}"])
        assert done.exit_code in (0, 1), (args, done.output)  # scope exits 1 on a flagged spread
        warnings = [line for line in done.stderr.splitlines() if line.startswith("segaudit: skipping")]
        assert len(warnings) == len(bad) and all(any(f"/{n}/" in w for w in warnings) for n in bad)
        if "scope" not in args:
            assert "good0" in done.stdout and "good1" in done.stdout, args


@pytest.mark.parametrize(
    "args,message",
    [
        (["diagnose", "train.iters=0"], "train.iters=0"),
        (["diagnose", "run_id=../escaped"], "run_id='../escaped'"),
        (["retrain", "retrain.tier=1", "optim.lr=-1"], "optim.lr=-1"),
    ],
)
def test_diagnose_and_retrain_refuse_before_their_first_step(tiny, runs_root, args, message):
    done = _segaudit(args[0], *tiny, *args[1:])  # after tiny's overrides, so they count
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not runs_root.exists() or list(runs_root.iterdir()) == []
