"""`segaudit audit --inventory`: many models, killed midway and rerun, bad rows alone."""

import json

import pandas as pd
from typer.testing import CliRunner

from expected import audit_exit, read
from segaudit import runs
from segaudit.cli import app
from segaudit.workflows.inventory import content_hash, plan_inventory

runner = CliRunner()


def test_the_file_itself_is_checked_before_anything_runs(tmp_path):
    (tmp_path / "bad.csv").write_text("source,colour\nx,red\n")
    done = runner.invoke(app, ["audit", "inventory", str(tmp_path / "bad.csv"), f"paths.runs={tmp_path / 'runs'}"])
    assert done.exit_code == 2 and "unknown column 'colour'" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_content_hash_follows_the_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"1")
    first = content_hash(tmp_path / "a")
    (tmp_path / "a" / "w.bin").write_bytes(b"2")
    assert content_hash(tmp_path / "a") != first


def test_a_factory_row_needs_the_commands_trust(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"")
    (tmp_path / "inv.csv").write_text("source,factory\nw.safetensors,evil.module:build\n")
    [row] = plan_inventory(tmp_path / "inv.csv", [])
    assert row.run is None and "--trust-model" in row.error
    [row] = plan_inventory(tmp_path / "inv.csv", [], trusted=True)
    assert row.error is None and "source.factory='evil.module:build'" in row.run.overrides


def test_a_row_another_process_is_auditing_is_left_to_it(inventory, tmp_path):
    """Two inventories at once on one runs folder: a row whose claim another process holds
    is reported 'in progress elsewhere' (not failed), and its unfinished folder is not
    removed; once the claim is free the same command audits it."""
    base, shared = inventory
    csv = tmp_path / "one.csv"
    pd.read_csv(base / "models.csv").iloc[:1].assign(source=str(base / "models" / "m0")).to_csv(csv, index=False)
    shared = [o for o in shared if not o.startswith("paths.runs=")] + [f"paths.runs={tmp_path / 'runs'}"]
    first = runner.invoke(app, ["audit", "inventory", str(csv), *shared])
    (unfinished,) = [p.parent for p in (tmp_path / "runs").glob("*/record.json")]
    run_id = unfinished.name
    assert first.exit_code == audit_exit(read(tmp_path / "runs", run_id)), first.output
    (unfinished / "record.json").unlink()  # as a process that is still auditing it would leave it
    (unfinished / "marker").write_text("the other process's files")
    with runs.claim(tmp_path / "runs", run_id) as mine:
        assert mine
        busy = runner.invoke(app, ["audit", "inventory", str(csv), *shared])
        assert busy.exit_code == 0, busy.output
        assert "in progress elsewhere" in busy.stdout and "being audited by another process" in busy.stdout
        assert "failed" not in busy.stdout and (unfinished / "marker").is_file()
    done = runner.invoke(app, ["audit", "inventory", str(csv), *shared])
    assert "1 of 1 rows audited" in done.stdout and not (unfinished / "marker").exists()
    assert json.loads((unfinished / "record.json").read_text())["status"] == "completed"
