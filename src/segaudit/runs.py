"""Run directories, atomic run records, and the run table.

Each run owns `paths.runs/<run_id>/` holding `config.yaml` (resolved), `record.json`,
`checkpoint.pt` and `train.log`. Records are replaced atomically (temp file in the
same folder, fsync, rename), so a killed process or a second writer never leaves a
half record; the table is rebuilt by scanning records, so parallel and cluster jobs
need no shared database.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd

RECORD = "record.json"
CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
LOG = "train.log"

# Columns of the run table, in display order; `history` holds per-evaluation metrics.
COLUMNS = [
    "run_id", "phase", "diagnose_id", "dataset", "model", "encoder", "loss",
    "train_condition", "eval_condition", "strategy", "seed", "status", "step", "iters",
    "miou", "macc", "aacc", "noise_miou", "gates", "ips", "device", "started_at", "duration_s", "history",
]

# Phases whose records measure a model or the labels rather than train one: left out of
# before/after comparisons and the scope analysis, so no model is counted twice.
NOT_TRAINING = ("prior", "gate", "audit", "validate")


def now() -> str:
    """UTC timestamp, ISO 8601, second precision."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write `path` through `write(fileobj)` into a temp file, fsync, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def json_safe(value: Any) -> Any:
    """NaN/inf become null so records are strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def new_record(cfg, run_id: str, command: str, **fields) -> dict:
    """A fresh `running` record for `cfg`; `fields` fill or override the run-specific keys
    (model, encoder, loss, tiers, conditions, iters, versions, ...)."""
    record = {
        "schema": 1, "run_id": run_id, "command": command, "phase": cfg.phase,
        "diagnose_id": cfg.diagnose_id, "strategy": cfg.strategy, "seed": cfg.seed,
        "dataset": cfg.dataset.name, "dataset_root": cfg.dataset.root,
        "class_names": list(cfg.dataset.class_names),
        "model": None, "encoder": None, "loss": None, "tiers": [],
        "train_condition": None, "eval_condition": None,
        "status": "running", "error": None, "step": 0, "iters": 0,
        "metrics": None, "metrics_by_condition": {}, "history": [], "train_log": [],
        "timings": {"train_s": 0.0, "eval_s": 0.0, "total_s": 0.0}, "throughput_ips": None,
        "started_at": now(), "finished_at": None, "versions": {}, "device": None,
    }
    record.update(fields)
    return record


def write_record(run_dir: Path, record: dict) -> None:
    """Atomically replace `run_dir/record.json`."""
    record["updated_at"] = now()
    text = json.dumps(json_safe(record), indent=1, allow_nan=False)
    atomic_write(Path(run_dir) / RECORD, lambda fh: fh.write(text))


def read_record(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / RECORD).read_text())


def read_gate_record(runs_root, diagnose_id: str) -> dict:
    """The verdict/gate record of a `segaudit diagnose` run."""
    from segaudit.errors import ConfigError

    path = Path(str(runs_root)).expanduser() / str(diagnose_id) / RECORD
    if not path.is_file():
        raise ConfigError(f"{diagnose_id}: no diagnose with that id under {runs_root}")
    record = json.loads(path.read_text())
    if "verdict" not in record:
        raise ConfigError(f"{diagnose_id}: run is not a diagnose (phase={record.get('phase')})")
    return record


def new_run_dir(runs_root: Path, phase: str, run_id: str | None = None) -> Path:
    """Create a fresh run directory; the id is `<yymmdd-HHMMSS utc>-<phase>-<hex>` by default."""
    runs_root = Path(runs_root).expanduser()
    runs_root.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        name = run_id or (
            f"{dt.datetime.now(dt.timezone.utc):%y%m%d-%H%M%S}-{phase}-{secrets.token_hex(2)}"
        )
        folder = runs_root / name
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            if run_id:
                raise
    raise RuntimeError(f"cannot create a run directory under {runs_root}")


def iter_records(runs_root: Path):
    """Yield every readable record under `runs_root` (unreadable ones are reported on stderr)."""
    runs_root = Path(runs_root).expanduser()
    if not runs_root.is_dir():
        return
    for path in sorted(runs_root.glob(f"*/{RECORD}")):
        try:
            yield json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            print(f"segaudit: skipping unreadable record {path} ({err})", file=sys.stderr)


def _row(record: dict) -> dict:
    final = record.get("metrics") or {}
    row = {key: record.get(key) for key in COLUMNS}
    row.update(
        miou=final.get("miou"),
        macc=final.get("macc"),
        aacc=final.get("aacc"),
        noise_miou=((record.get("metrics_by_condition") or {}).get("noise") or {}).get("miou"),
        ips=record.get("throughput_ips"),
        duration_s=(record.get("timings") or {}).get("total_s"),
        history=record.get("history") or [],
    )
    return row


def load_table(root: str | Path) -> pd.DataFrame:
    """All runs under `root` as a DataFrame, one row per run, oldest first.

    Columns are `COLUMNS`: identity and conditions of each run, its status, the final
    evaluation (`miou`, `macc`, `aacc`, percent; NaN when not evaluated), the final mIoU
    on noise input when the run evaluated it (`noise_miou`), a validate run's passed/run
    gates (`gates`, e.g. "3/4"), throughput and the per-evaluation `history` (a list of dicts with `step`, `miou`, ...).
    """
    rows = [_row(r) for r in iter_records(Path(root))]
    table = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("miou", "macc", "aacc", "noise_miou", "ips", "duration_s"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype(float)
    return table.sort_values(["started_at", "run_id"], kind="stable").reset_index(drop=True)
