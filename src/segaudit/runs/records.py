"""Run directories, atomic run records, and the run table.

Each run owns `paths.runs/<run_id>/` holding `config.yaml` (resolved), `record.json`,
`checkpoint.pt` and `train.log`. Records are replaced atomically (temp file in the
same folder, fsync, rename), so a killed process or a second writer never leaves a
half record; the table is rebuilt by scanning records, so parallel and cluster jobs
need no shared database.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import math
import os
import platform
import re
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Required, TypedDict

import pandas as pd

from segaudit.core.config import to_yaml
from segaudit.core.errors import ConfigError

SCHEMA = 1  # bump when a field changes meaning
RECORD = "record.json"
CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
LOG = "train.log"
LOCK = ".lock"

# Columns of the run table, in display order; `history` holds per-evaluation metrics.
COLUMNS = [
    "run_id",
    "phase",
    "diagnose_id",
    "dataset",
    "model",
    "encoder",
    "loss",
    "train_condition",
    "eval_condition",
    "strategy",
    "seed",
    "status",
    "step",
    "iters",
    "miou",
    "macc",
    "aacc",
    "noise_miou",
    "gates",
    "ips",
    "device",
    "started_at",
    "duration_s",
    "history",
]

# Phases whose records measure a model or the labels rather than train one: left out of
# before/after comparisons and the scope analysis, so no model is counted twice.
NOT_TRAINING = ("prior", "gate", "audit", "validate", "suspects", "probe")  # not a user's model


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


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    """Write `path` through `write(fileobj)` into a temp file, fsync, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp makes the file 0600 and the rename keeps that: give it the mode any
        # other new file gets here (0666 less the umask), so shared run folders stay readable.
        os.fchmod(fd, 0o666 & ~_umask())
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


# --------------------------------------------------------------------------- the schema
class Metrics(TypedDict):
    """Dataset-level scores in percent (`segaudit.measure.metrics`); NaN/None where undefined."""

    miou: float | None
    macc: float | None
    aacc: float | None
    iou: list[float | None]
    acc: list[float | None]


class AuditBlock(TypedDict):
    """`segaudit audit`: mIoU per input condition against the analytic prior."""

    source: str
    source_run: str | None
    miou: dict[str, float | None]
    prior_miou: float
    majority_miou: float
    content_gain: float
    inference: dict
    agreement_real_noise: float
    metrics: dict[str, Metrics]
    red_flags: list[str]  # `segaudit.diagnostics.audit.red_flags`; audit exits 1 when there is one
    reported_miou: float | None  # what the user's own pipeline reported (--reported-miou)
    finding: str | None  # which side to look at, given reported_miou
    probe: dict | None  # `segaudit.diagnostics.card_probe.probe_card`: external models near the prior


class ValidateBlock(TypedDict):
    """`segaudit validate`: each gate's value, threshold and result, and what fed them."""

    source: str
    source_run: str | None
    gates: list[dict]  # {name, value, threshold, passed, detail, result}
    passed: bool
    robustness: dict[str, float | None]
    test: dict | None
    cross_dataset: dict[str, float | None]
    gate_preset: str
    inference: dict


class PriorBlock(TypedDict):
    """`segaudit prior`: the label-only predictor and the global-majority baseline."""

    size: list[int]
    n_train: int
    n_val: int
    majority_class: int
    majority_class_name: str
    majority: Metrics
    per_pixel: Metrics
    reported: str
    labels_per_s: float


class GateBlock(TypedDict):
    """`segaudit diagnose`: the decision gate's choice and why."""

    preset: str
    decision: str
    why: str
    next_checks: list[str]


class RunRecord(TypedDict, total=False):
    """`record.json` of one run. The core (identity, status, metrics, history, timings,
    versions) is common to every phase; each phase adds its own block: `audit`,
    `validate` (+ `gates`, "passed/run"), `prior`, or for a diagnose (`phase=gate`)
    `verdict`, `reasons`, `evidence`, `steps`, `gate`, `split` and `classes`; or
    `suspects` (`phase=suspects`)."""

    schema: Required[int]
    run_id: Required[str]
    command: str
    phase: Required[str]
    diagnose_id: str | None
    strategy: str | None
    seed: int | None
    dataset: str | None
    dataset_root: str | None
    class_names: list[str]
    model: str | None
    encoder: str | None
    loss: str | None
    tiers: list[int]
    train_condition: str | None
    eval_condition: str | None
    status: Required[str]  # running | paused (at a diagnose stage; resumable) | completed | failed
    error: str | None
    step: int
    iters: int
    metrics: Metrics | None  # the final evaluation on `eval_condition`
    metrics_by_condition: dict[str, Metrics]
    history: list[dict]  # {step, condition, **Metrics} per evaluation
    train_log: list[dict]  # {step, loss, lr, ips, **loss terms} per log interval
    timings: dict[str, float]  # train_s, eval_s, total_s
    throughput_ips: float | None
    started_at: str
    finished_at: str | None
    updated_at: str
    versions: dict[str, str]
    device: str | None
    world_size: int
    inference: dict  # how the model saw each image (`segaudit.models.inference`)
    skipped: dict[str, list]  # pairs left out by --skip-bad
    stopped_early: dict  # diagnose stopped it at a stage: {step, schedule, why}
    plots: list[str]
    audit: AuditBlock
    validate: ValidateBlock
    gates: str
    prior: PriorBlock
    verdict: str
    reasons: list[str]
    evidence: dict
    steps: dict[str, str]
    gate: GateBlock
    split: dict  # diagnose: `segaudit.measure.consistency.split_consistency`
    classes: dict  # diagnose: {rows: the baseline's class table, line: its summary}
    suspects: dict  # suspects: flagged pairs per split (the pairs are in suspects.json)


# Types a readable record's fields must have (None allowed where the schema allows it).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,),
    "phase": (str,),
    "status": (str,),
    "command": (str,),
    "diagnose_id": (str, type(None)),
    "strategy": (str, type(None)),
    "seed": (int, type(None)),
    "dataset": (str, type(None)),
    "model": (str, type(None)),
    "encoder": (str, type(None)),
    "loss": (str, type(None)),
    "train_condition": (str, type(None)),
    "eval_condition": (str, type(None)),
    "step": (int,),
    "iters": (int,),
    "metrics": (dict, type(None)),
    "metrics_by_condition": (dict,),
    "history": (list,),
    "train_log": (list,),
    "timings": (dict,),
    "throughput_ips": (int, float, type(None)),
    "started_at": (str,),
    "gates": (str, type(None)),
    "audit": (dict,),
    "validate": (dict,),
    "prior": (dict,),
    "evidence": (dict,),
    "steps": (dict,),
    "gate": (dict,),
    "verdict": (str,),
}
_REQUIRED = ("run_id", "phase", "status")


class RecordError(ValueError):
    """A `record.json` that is not a run record (wrong type, missing core field)."""


def check_record(value: Any) -> RunRecord:
    """`value` as a run record, or `RecordError` naming the first field that is wrong.

    Checks the shape report, plots and resume rely on: an object, the core identity
    (`run_id`, `phase`, `status`), and the type of every known field that is present;
    an mIoU, when present, is a number.
    """
    if not isinstance(value, dict):
        raise RecordError(f"not a JSON object ({type(value).__name__})")
    missing = [key for key in _REQUIRED if key not in value]
    if missing:
        raise RecordError(f"missing {', '.join(missing)}")
    for key, types in _FIELD_TYPES.items():
        if key in value and (not isinstance(value[key], types) or isinstance(value[key], bool) and bool not in types):
            raise RecordError(f"{key} is {type(value[key]).__name__}")
    miou = (value.get("metrics") or {}).get("miou")
    if miou is not None and (not isinstance(miou, (int, float)) or isinstance(miou, bool)):
        raise RecordError(f"metrics.miou is {type(miou).__name__}")
    return value  # type: ignore[return-value]


def package_versions() -> dict[str, str | None]:
    """Python and the packages whose versions decide a run's numbers."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("segaudit", "torch", "torchvision", "segmentation-models-pytorch", "hydra-core", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def runs_root(cfg) -> Path:
    """`paths.runs` of a config: the folder every run of it lives in (user-expanded)."""
    return Path(str(cfg.paths.runs)).expanduser()


def new_record(cfg, run_id: str, command: str, **fields) -> RunRecord:
    """A fresh `running` record for `cfg`; `fields` fill or override the run-specific keys
    (model, encoder, loss, tiers, conditions, iters, a phase's block, ...)."""
    record: RunRecord = {
        "schema": SCHEMA,
        "run_id": run_id,
        "command": command,
        "phase": cfg.phase,
        "diagnose_id": cfg.diagnose_id,
        "strategy": cfg.strategy,
        "seed": cfg.seed,
        "dataset": cfg.dataset.name,
        "dataset_root": cfg.dataset.root,
        "class_names": list(cfg.dataset.class_names),
        "model": None,
        "encoder": None,
        "loss": None,
        "tiers": [],
        "train_condition": None,
        "eval_condition": None,
        "status": "running",
        "error": None,
        "step": 0,
        "iters": 0,
        "metrics": None,
        "metrics_by_condition": {},
        "history": [],
        "train_log": [],
        "timings": {"train_s": 0.0, "eval_s": 0.0, "total_s": 0.0},
        "throughput_ips": None,
        "started_at": now(),
        "finished_at": None,
        "versions": package_versions(),
        "device": None,
    }
    record.update(fields)  # type: ignore[typeddict-item]
    return record


def open_run(cfg, command: str, **fields) -> tuple[Path, RunRecord]:
    """Every phase's start: a new run directory under `paths.runs` (named `cfg.run_id`,
    or generated), its resolved `config.yaml`, and a first record written atomically.

    `cfg.phase` names the phase; `fields` fill the record (see `new_record`).

    Raises:
        ConfigError: `run_id` is not one safe folder name, or is taken.
    """
    folder = new_run_dir(runs_root(cfg), str(cfg.phase), None if cfg.run_id is None else str(cfg.run_id))
    cfg = cfg.copy()
    cfg.run_id = folder.name
    (folder / CONFIG).write_text(to_yaml(cfg))
    record = new_record(cfg, folder.name, command, **fields)
    write_record(folder, record)
    return folder, record


def write_record(run_dir: Path, record: RunRecord) -> None:
    """Atomically replace `run_dir/record.json`."""
    record["updated_at"] = now()
    text = json.dumps(json_safe(record), indent=1, allow_nan=False)
    atomic_write(Path(run_dir) / RECORD, lambda fh: fh.write(text))


def _load_record(path: Path) -> RunRecord:
    """Parse and check one `record.json`; `RecordError` says what is wrong with it."""
    try:
        return check_record(json.loads(path.read_bytes().decode("utf-8")))
    except UnicodeDecodeError:
        raise RecordError("not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise RecordError(f"not JSON ({err})") from None


def read_record(run_dir: Path) -> RunRecord:
    """The record of one run directory.

    Raises:
        ConfigError: the record is missing, unreadable or not a run record.
    """
    path = Path(run_dir) / RECORD
    try:
        return _load_record(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no run record") from None
    except (OSError, RecordError) as err:
        raise ConfigError(f"{path}: unusable run record ({err})") from None


def read_gate_record(root, diagnose_id: str) -> RunRecord:
    """The verdict/gate record of a `segaudit diagnose` run."""
    root = Path(str(root)).expanduser()
    if not (root / str(diagnose_id) / RECORD).is_file():
        raise ConfigError(f"{diagnose_id}: no diagnose with that id under {root}")
    record = read_record(root / str(diagnose_id))
    if "verdict" not in record or "evidence" not in record or "gate" not in record:
        raise ConfigError(f"{diagnose_id}: run is not a diagnose (phase={record.get('phase')})")
    return record


_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_run_id(run_id: str) -> str:
    """`run_id` if it is one safe folder name (letters, digits, `._+-`, not starting with a
    dot or dash, at most 128 characters); otherwise a `ConfigError`."""
    if not _SAFE_ID.fullmatch(run_id):
        raise ConfigError(
            f"run_id={run_id!r}: use one folder name of letters, digits and ._+- (no slashes, not starting with . or -)"
        )
    return run_id


def check_new_run_id(root: Path, run_id: str) -> str:
    """`run_id` if it is a safe folder name not yet taken under `root` (a `ConfigError` if not)."""
    check_run_id(run_id)
    if (Path(root).expanduser() / run_id).exists():
        raise _taken(root, run_id)
    return run_id


def _taken(root: Path, run_id: str) -> ConfigError:
    return ConfigError(
        f"run_id={run_id}: a run with that id exists under {root} "
        f"(choose another id, or resume={run_id} to continue it)"
    )


def new_run_dir(root: Path, phase: str, run_id: str | None = None) -> Path:
    """Create a fresh run directory `root/<run_id>`; the id is
    `<yymmdd-HHMMSS utc>-<phase>-<4 hex>` when not given.

    Raises:
        ConfigError: `run_id` is not a safe folder name or is taken; `root` is not a
            writable folder.
    """
    root = Path(root).expanduser()
    if run_id is not None:
        check_run_id(run_id)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"paths.runs={root}: not a folder") from None
    except OSError as err:
        raise ConfigError(f"paths.runs={root}: cannot create it ({err.strerror})") from None
    for _ in range(100):
        name = run_id or (f"{dt.datetime.now(dt.timezone.utc):%y%m%d-%H%M%S}-{phase}-{secrets.token_hex(2)}")
        try:
            (root / name).mkdir()
            return root / name
        except FileExistsError:
            if run_id:
                raise _taken(root, run_id) from None
        except PermissionError:
            raise ConfigError(f"paths.runs={root}: not writable") from None
    raise ConfigError(f"paths.runs={root}: cannot create a run directory")


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive `fcntl` lock on a run directory (its `.lock` file) while inside.

    Raises:
        ConfigError: another process holds it (is training this run right now).
    """
    handle = open(Path(folder) / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(
            f"run {Path(folder).name} is being trained by another process right now; wait for it, or stop it first"
        ) from None
    try:
        yield
    finally:
        handle.close()  # closing drops the lock; so does the process dying


CLAIMS = ".claims"  # under the runs root: one lock file per claimed run id
ELSEWHERE = "in progress elsewhere"  # a job's status when another process holds its claim


@contextmanager
def claim(root: Path, run_id: str) -> Iterator[bool]:
    """Hold an exclusive `fcntl` lock on `run_id` for the whole of a job that may remove
    and recreate its run folder (an inventory's audit); yields False, holding nothing,
    when another process holds it. The lock file sits beside the run folders, in
    `root/.claims/`, so removing the folder never drops the lock."""
    folder = Path(root) / CLAIMS
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / f"{check_run_id(run_id)}.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        yield False
        return
    try:
        yield True
    finally:
        handle.close()


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files a kill during `atomic_write` left in a run directory (call it
    while holding `run_lock`, so no live writer owns them). Returns what was removed."""
    stale = [p for name in (CHECKPOINT, RECORD) for p in Path(folder).glob(f".{name}.*")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def iter_records(root: Path) -> Iterator[RunRecord]:
    """Yield every usable record under `root`; an unreadable or ill-typed one is skipped
    with one warning line on stderr naming it, so one bad file never breaks the table."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return
    for path in sorted(root.glob(f"*/{RECORD}")):
        try:
            yield _load_record(path)
        except (OSError, RecordError) as err:
            print(f"segaudit: skipping {path}: {err}", file=sys.stderr)


def _row(record: RunRecord) -> dict:
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
    return table_of(list(iter_records(Path(root))))


def table_of(records: list[RunRecord]) -> pd.DataFrame:
    """`load_table` of records already read (one row per record, oldest first)."""
    table = pd.DataFrame([_row(r) for r in records], columns=COLUMNS)
    for col in ("miou", "macc", "aacc", "noise_miou", "ips", "duration_s"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype(float)
    for col in ("seed", "step", "iters"):  # whole numbers, missing where a record has none
        table[col] = pd.to_numeric(table[col], errors="coerce").astype("Int64")
    return table.sort_values(["started_at", "run_id"], kind="stable").reset_index(drop=True)
