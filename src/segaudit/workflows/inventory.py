"""`segaudit audit inventory models.csv`: audit every model a team already has.

One CSV row per model. Columns (only `source` is required):

- `source`: the model (any `segaudit audit` source); relative paths are read from the
  CSV's folder;
- `strategy`, `model`, `dataset`, `root`: how the run table labels the audit, and the
  dataset preset and folder it is measured on;
- `factory`, `card` (a card YAML) and any card field (`mean`, `std`, `input_range`,
  `channels`, `output`, `upsample`, `class_map`): as for one audit. A file cannot vouch
  for the code it names: a `factory` row, or a TorchScript/.pt2 model, loads only when
  the command itself is given `--trust-model`;
- `reported_miou`: what the team's own evaluation said, for the finding.

Every row's run id is deterministic (a content hash of the model plus its dataset, card
and settings), so the same command again skips finished audits and redoes interrupted
ones. A bad row (missing file, wrong class count, unreadable model) fails alone.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from segaudit import runs
from segaudit.core.datafiles import check_plain, check_regular_file
from segaudit.core.errors import ConfigError
from segaudit.models.sources import ModelCard
from segaudit.workflows.retrain import SweepRun, launch

CARD_FIELDS = tuple(f.name for f in fields(ModelCard))
COLUMNS = ("source", "strategy", "model", "dataset", "root", "factory", "card", "reported_miou", *CARD_FIELDS)
_LIST_FIELDS = ("mean", "std", "class_map")


@dataclass
class InventoryRow:
    """One CSV row: its planned audit, or why it cannot run."""

    line: int  # 1-based data row, as a spreadsheet numbers it under the header
    source: str
    run: SweepRun | None = None
    error: str | None = None


def content_hash(path: Path) -> str:
    """SHA-1 of a model file, or of every file in a model folder (names and bytes)."""
    digest = hashlib.sha1()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha1").digest())
    return digest.hexdigest()


def _quoted(value: str) -> str:
    if "'" in value:
        raise ConfigError(f"{value}: a quote (') in a path or name is not supported")
    return f"'{value}'"


def _row_overrides(row: dict[str, str], folder: Path, trusted: bool) -> tuple[Path, list[str]]:
    """The model path and the config overrides a row stands for."""
    source = Path(row["source"]).expanduser()
    source = source if source.is_absolute() else folder / source
    if not source.exists():
        raise ConfigError(f"{source}: no such model file or folder")
    if not source.is_dir():  # the content hash reads it whole: /dev/zero or a FIFO never ends
        check_regular_file(source, "source")
    overrides = []
    for column, key in (("dataset", "dataset"), ("strategy", "strategy"), ("model", "audit.model_label")):
        if row.get(column):
            overrides.append(f"{key}={_quoted(row[column])}" if column != "dataset" else f"dataset={row[column]}")
    for column, key in (("root", "dataset.root"), ("factory", "source.factory"), ("card", "source.card_file")):
        if row.get(column):
            value = row[column]
            if column != "factory" and not Path(value).expanduser().is_absolute():
                value = str(folder / value)
            overrides.append(f"{key}={_quoted(value)}")
    if row.get("factory") and not trusted:
        raise ConfigError(
            f"factory {row['factory']}: a factory named in a file is code to run; give the "
            f"inventory command --trust-model if you trust it"
        )
    if row.get("reported_miou"):
        overrides.append(f"audit.reported_miou={float(row['reported_miou'])}")
    for name in CARD_FIELDS:
        if row.get(name):
            value = row[name] if name in _LIST_FIELDS or name in ("input_range", "upsample") else _quoted(row[name])
            overrides.append(f"card.{name}={value}")
    return source, overrides


def plan_inventory(path: Path, shared: list[str], trusted: bool = False) -> list[InventoryRow]:
    """Read the CSV and plan one audit per row; bad rows carry their error instead.

    Raises:
        ConfigError: the file itself is unusable (unreadable, no `source` column, a
            column segaudit does not know).
    """
    path = Path(path).expanduser()
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--inventory {path}: unreadable CSV ({str(err).splitlines()[0]})") from None
    table.columns = [str(c).strip() for c in table.columns]
    if "source" not in table.columns:
        raise ConfigError(f"--inventory {path}: needs a 'source' column (columns: {', '.join(COLUMNS)})")
    unknown = [c for c in table.columns if c not in COLUMNS]
    if unknown:
        raise ConfigError(f"--inventory {path}: unknown column '{unknown[0]}' (columns: {', '.join(COLUMNS)})")
    planned = []
    for line, row in enumerate(table.to_dict("records"), start=1):
        row = {k: str(v).strip() for k, v in row.items()}
        entry = InventoryRow(line, row["source"])
        try:
            check_plain(row, f"--inventory {path} line {line}")  # cells become config overrides
            source, overrides = _row_overrides(row, path.parent, trusted)
            key = "\n".join([content_hash(source), *sorted(overrides), *sorted(shared)])
            stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", source.name)[:40].strip("-.") or "model"
            entry.run = SweepRun(
                f"audit-{stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}",
                tuple([*shared, *overrides]),
                target=str(source),
            )
        except (ConfigError, ValueError, OSError) as err:
            entry.error = str(err).splitlines()[0]
        planned.append(entry)
    return planned


def audit_inventory(cfg: DictConfig, path: Path, extra: list[str], jobs: int) -> list[dict]:
    """`segaudit audit inventory FILE`: audit every row that is not done yet.

    Returns:
        One result per row, in the file's order: `line`, `source`, `run_id`, `status`
        (completed, skipped: done before, failed), `miou`, `red_flags` and `error`.
    """
    root = str(runs.runs_root(cfg).resolve())
    trusted = bool(cfg.source.trust)  # --trust-model on the command line, never from the file
    shared = [
        f"paths.runs={root}",
        "train.progress=false",
        *(["source.trust=true"] if trusted else []),
        *[o for o in extra if not o.startswith(("paths.runs=", "launcher=", "launcher.", "source."))],
    ]
    planned = plan_inventory(path, shared, trusted)
    runnable = [row.run for row in planned if row.run is not None]
    duplicates = {r.run_id for r in runnable if sum(o.run_id == r.run_id for o in runnable) > 1}
    by_id = {
        result["run_id"]: result
        for result in launch(list({r.run_id: r for r in runnable}.values()), cfg.launcher, jobs)
    }
    results = []
    for row in planned:
        result = {
            "line": row.line,
            "source": row.source,
            "run_id": None,
            "status": "failed",
            "miou": None,
            "red_flags": None,
            "error": row.error,
        }
        if row.run is not None:
            result.update(by_id[row.run.run_id], run_id=row.run.run_id)
            if row.run.run_id in duplicates:
                result["error"] = "the same model and settings as another row: audited once"
            record = _completed_record(Path(root) / row.run.run_id)
            if record is not None:
                result.update(miou=record["metrics"]["miou"], red_flags=len(record["audit"]["red_flags"]))
        results.append(result)
    return results


def _completed_record(folder: Path) -> dict | None:
    try:
        record = runs.read_record(folder)
    except ConfigError:
        return None
    return record if record.get("status") == "completed" else None
