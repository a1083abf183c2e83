"""Run records, the run table and its exports."""

import json
import math

import pandas as pd
import pytest

from segaudit.core.errors import ConfigError
from segaudit.runs.records import COLUMNS, atomic_write, load_table, new_run_dir, read_record, write_record


def _record(run_id, started, miou, **extra):
    record = {
        "schema": 1,
        "run_id": run_id,
        "phase": "train",
        "diagnose_id": None,
        "dataset": "synthetic",
        "model": "unet",
        "encoder": "resnet18",
        "loss": "ce",
        "train_condition": "real",
        "eval_condition": "real",
        "strategy": "baseline",
        "seed": 0,
        "status": "completed",
        "step": 10,
        "iters": 10,
        "started_at": started,
        "throughput_ips": 12.5,
        "timings": {"total_s": 3.0},
        "metrics": None if miou is None else {"miou": miou, "macc": 50.0, "aacc": 80.0},
        "history": [] if miou is None else [{"step": 10, "miou": miou}],
    }
    record.update(extra)
    return record


def _write(root, record):
    (root / record["run_id"]).mkdir(parents=True)
    write_record(root / record["run_id"], record)


def test_round_trip(tmp_path):
    _write(tmp_path, _record("b", "2026-01-02T00:00:00+00:00", 41.5, strategy="tier1", seed=1))
    _write(tmp_path, _record("a", "2026-01-01T00:00:00+00:00", 40.0))
    _write(tmp_path, _record("c", "2026-01-03T00:00:00+00:00", None, status="running"))
    table = load_table(tmp_path)
    assert list(table.columns) == COLUMNS
    assert list(table.run_id) == ["a", "b", "c"]  # oldest first
    assert table.loc[1, "miou"] == 41.5 and table.loc[1, "strategy"] == "tier1"
    assert math.isnan(table.loc[2, "miou"]) and table.loc[2, "status"] == "running"
    assert table.loc[0, "history"] == [{"step": 10, "miou": 40.0}]
    assert table.loc[0, "duration_s"] == 3.0 and table.loc[0, "ips"] == 12.5


def test_empty_or_missing_root(tmp_path):
    assert load_table(tmp_path / "nothing").empty
    assert list(load_table(tmp_path).columns) == COLUMNS


def test_nan_is_written_as_null(tmp_path):
    record = _record("r", "2026-01-01T00:00:00+00:00", float("nan"))
    record["metrics"]["iou"] = [1.0, float("inf")]
    write_record(tmp_path, record)
    text = (tmp_path / "record.json").read_text()
    assert json.loads(text)["metrics"]["iou"] == [1.0, None] and "NaN" not in text
    assert read_record(tmp_path)["metrics"]["miou"] is None


@pytest.mark.parametrize(
    "content",
    [
        b"null",
        b"[]",
        b'"text"',
        b"{}",
        b"\xff\xfe not utf-8",
        json.dumps(_record("x", "2026-01-02T00:00:00+00:00", 40.0, metrics="oops")).encode(),
        json.dumps(_record("x", "2026-01-02T00:00:00+00:00", 40.0, history={"a": 1})).encode(),
        json.dumps(_record("x", "2026-01-02T00:00:00+00:00", 40.0, seed="zero")).encode(),
        json.dumps(_record("x", "2026-01-02T00:00:00+00:00", "41")).encode(),
    ],
)
def test_a_malformed_record_is_skipped_with_one_warning(tmp_path, capsys, content):
    _write(tmp_path, _record("good", "2026-01-01T00:00:00+00:00", 40.0))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "record.json").write_bytes(content)
    table = load_table(tmp_path)
    assert list(table.run_id) == ["good"]
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and "bad/record.json" in warnings[0]
    with pytest.raises(ConfigError, match="bad/record.json"):
        read_record(tmp_path / "bad")


def test_missing_fields_show_as_missing_not_as_zero(tmp_path):
    _write(tmp_path, {"schema": 1, "run_id": "bare", "phase": "train", "status": "failed"})
    row = load_table(tmp_path).iloc[0]
    assert row.seed is pd.NA and math.isnan(row.miou)
    assert "0.00" not in rich_table_text(load_table(tmp_path))


def rich_table_text(table) -> str:
    from rich.console import Console

    from segaudit.report.terminal import rich_table

    console = Console(width=100, record=True)
    console.print(rich_table(table))
    return console.export_text()


@pytest.mark.parametrize("run_id", ["../escaped", "/abs/olute", "a/b", ".", "..", ".hidden", "-x", ""])
def test_run_id_must_be_one_safe_folder_name(tmp_path, run_id):
    with pytest.raises(ConfigError, match="run_id="):
        new_run_dir(tmp_path / "runs", "train", run_id)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "runs" / "a").exists()


def test_a_taken_run_id_is_refused(tmp_path):
    new_run_dir(tmp_path, "train", "same")
    with pytest.raises(ConfigError, match="run_id=same: a run with that id exists"):
        new_run_dir(tmp_path, "train", "same")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "record.json"
    target.write_text('{"ok": true}')

    def explode(fh):
        fh.write('{"half":')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert json.loads(target.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_unreadable_record_is_skipped(tmp_path, capsys):
    _write(tmp_path, _record("good", "2026-01-01T00:00:00+00:00", 40.0))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "record.json").write_text("{not json")
    table = load_table(tmp_path)
    assert list(table.run_id) == ["good"]
    assert "bad" in capsys.readouterr().err


def test_table_is_a_real_dataframe(tmp_path):
    for i, strategy in enumerate(["baseline", "tier1", "tier1"]):
        _write(tmp_path, _record(f"r{i}", f"2026-01-0{i + 1}T00:00:00+00:00", 40.0 + i, strategy=strategy))
    means = load_table(tmp_path).groupby("strategy")["miou"].mean()
    pd.testing.assert_series_equal(
        means, pd.Series({"baseline": 40.0, "tier1": 41.5}, name="miou").rename_axis("strategy")
    )


def test_compare_before_after(tmp_path):
    from segaudit.diagnostics.scope import compare_table

    day = iter(range(1, 30))

    def add(run_id, miou, **extra):
        _write(tmp_path, _record(run_id, f"2026-01-{next(day):02d}T00:00:00+00:00", miou, **extra))

    add("prior", 30.0, phase="prior", model="analytic_prior", train_condition="labels", eval_condition="labels")
    add("b1", 39.0, metrics_by_condition={"noise": {"miou": 20.0}})
    add("b2", 41.0, metrics_by_condition={"noise": {"miou": 22.0}})
    add("t1", 45.0, strategy="tier1")
    add("other", 50.0, model="pspnet", strategy="tier1")  # no pspnet baseline: no delta
    add("noisy", 31.0, strategy="tier1", train_condition="noise")  # not a real-image run
    add("broken", None, strategy="tier1", status="failed")
    compared = compare_table(load_table(tmp_path)).set_index(["model", "group"])
    base = compared.loc[("unet", "baseline")]
    assert base.runs == 2 and base.miou == 40.0 and base.noise_miou == 21.0
    assert base.prior == 30.0 and base.content_gain == 10.0 and base.delta == 0.0
    tier1 = compared.loc[("unet", "tier1")]
    assert tier1.runs == 1 and tier1.delta == 5.0 and tier1.content_gain == 15.0
    assert math.isnan(compared.loc[("pspnet", "tier1")].delta)
    assert len(compared) == 3
