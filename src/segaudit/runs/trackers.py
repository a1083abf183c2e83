"""Trackers: every run's numbers in TensorBoard or MLflow too (`logger=tensorboard|mlflow`).

The run table stays the source of truth. A tracker mirrors what the run record holds:
each `train_log` interval (loss and its terms, lr, images/s) and each evaluation of the
`history` as they happen, then the final record, its PNGs and (for TensorBoard) a sample
grid. A tracker that fails for any reason (a bad tracking URI, a full disk) prints one
warning line and goes quiet for the rest of the run: it never fails or holds up a run.
A missing extra (`pip install 'segaudit[tensorboard]'`) is a bad setting instead, refused
when the config is composed (`config.check_extras`), before any run directory exists.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from rich.markup import escape

from segaudit.core.config import check_extras, load_yaml, safe_instantiate
from segaudit.core.console import console
from segaudit.core.errors import ConfigError, first_line
from segaudit.runs.records import CONFIG, RECORD, RunRecord, runs_root

_METRICS = ("miou", "macc", "aacc", "nll_bits")


class Tracker:
    """Mirrors one run record into a tracker; subclasses say how to write each thing.

    Every call is guarded: the first exception prints one warning and switches the
    tracker off, so the run goes on exactly as without it.
    """

    name = "tracker"
    wants_pictures = False  # draw a trained model's sample grid for it at the end

    def __init__(self) -> None:
        self.broken = False
        self._train_seen = 0
        self._eval_seen = 0

    # -- what a subclass writes
    def _open(self, run_dir: Path, record: RunRecord, cfg: DictConfig) -> None:
        raise NotImplementedError

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def _close(self, run_dir: Path, record: RunRecord, pictures: list[Path]) -> None:
        raise NotImplementedError

    # -- what segaudit calls
    def _guard(self, action: Callable[[], None]) -> None:
        if self.broken:
            return
        try:
            action()
        except Exception as err:  # a tracker never fails the run: one line, then silence
            self.broken = True
            console.print(
                f"[yellow]warning:[/] logger={self.name} stopped logging this run "
                f"({type(err).__name__}: {escape(first_line(err))}); the run goes on and its "
                f"record has every number",
                soft_wrap=True,
                highlight=False,
            )

    def open(self, run_dir: Path, record: RunRecord, cfg: DictConfig) -> None:
        """Start (or, for a resumed run, continue) the tracker's run; entries already in
        the record were logged by the process that wrote them."""
        self._train_seen, self._eval_seen = len(record.get("train_log", [])), len(record.get("history", []))
        self._guard(lambda: self._open(Path(run_dir), record, cfg))

    def sync(self, record: RunRecord) -> None:
        """Log the record's `train_log` and `history` entries that are new since the last call."""
        train_log, history = record.get("train_log", []), record.get("history", [])
        fresh = [*train_scalars(train_log[self._train_seen :]), *eval_scalars(history[self._eval_seen :])]
        self._train_seen, self._eval_seen = len(train_log), len(history)
        for step, values in fresh:
            self._guard(lambda step=step, values=values: self._scalars(step, values))

    def draw(self, make: Callable[[], Path]) -> list[Path]:
        """`make()`'s picture for the tracker, when it logs pictures (none if drawing fails)."""
        drawn: list[Path] = []
        if self.wants_pictures:
            self._guard(lambda: drawn.append(make()))
        return drawn

    @contextmanager
    def closed_on_error(self, run_dir: Path, record: RunRecord) -> Iterator[None]:
        """End the tracker's run when the block raises (interrupt, failure), then re-raise."""
        try:
            yield
        except BaseException:
            self.close(run_dir, record)
            raise

    def close(self, run_dir: Path, record: RunRecord, pictures: list[Path] = ()) -> None:
        """Log the final numbers, the record and its pictures, and end the tracker's run."""
        self.sync(record)
        step = int(record.get("step") or 0)
        final = summary_scalars(record)
        if final:
            self._guard(lambda: self._scalars(step, final))
        shown = [Path(p) for p in [*record.get("plots", []), *pictures] if Path(p).is_file()]
        self._guard(lambda: self._close(Path(run_dir), record, shown))


def train_scalars(entries: list[dict]) -> Iterator[tuple[int, dict[str, float]]]:
    """`train/loss`, `train/lr`, `train/ips` and `train/<loss term>` per `train_log` entry."""
    for entry in entries:
        yield (
            int(entry["step"]),
            {
                f"train/{key}": float(value)
                for key, value in entry.items()
                if key != "step" and isinstance(value, int | float)
            },
        )


def eval_scalars(entries: list[dict]) -> Iterator[tuple[int, dict[str, float]]]:
    """`<condition>/miou`, `/macc`, `/aacc`, `/nll_bits` per `history` entry (the evaluation's input)."""
    for entry in entries:
        yield (
            int(entry["step"]),
            {f"{entry['condition']}/{key}": float(entry[key]) for key in _METRICS if entry.get(key) is not None},
        )


def summary_scalars(record: RunRecord) -> dict[str, float]:
    """The numbers a run without training steps ends with: `final/miou` (and macc, aacc),
    each input condition's mIoU, a diagnose's evidence, an audit's content gain."""
    values = {
        f"final/{key}": float(value)
        for key, value in (record.get("metrics") or {}).items()
        if key in _METRICS and value is not None
    }
    values |= {
        f"final/{condition}/miou": float(metrics["miou"])
        for condition, metrics in (record.get("metrics_by_condition") or {}).items()
        if metrics and metrics.get("miou") is not None
    }
    values |= {
        f"evidence/{key}": float(value)
        for key, value in (record.get("evidence") or {}).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    evidence = record.get("evidence") or {}
    for key, name in (("information", "content_bits"), ("versus_shuffled", "over_control_bits")):
        block = (evidence.get(key) or {}).get("content" if key == "information" else "bits")
        if block and block.get("value") is not None:
            values[f"evidence/{name}"] = float(block["value"])
    misaligned = (evidence.get("misaligned") or {}).get("share")
    if misaligned:
        values["evidence/misaligned_share"] = float(misaligned["value"])
    gain = (record.get("audit") or {}).get("content_gain")
    if gain is not None:
        values["audit/content_gain"] = float(gain)
    return values


def run_tags(record: RunRecord) -> dict[str, str]:
    """What a tracker's run is found by: segaudit's run id, phase, strategy, verdict."""
    tags = {
        "segaudit.run_id": record["run_id"],
        "segaudit.phase": record["phase"],
        "segaudit.strategy": record.get("strategy"),
        "segaudit.diagnostics.verdict": record.get("verdict"),
        "segaudit.diagnose_id": record.get("diagnose_id"),
        "segaudit.status": record.get("status"),
    }
    return {key: str(value) for key, value in tags.items() if value is not None}


def flat_params(cfg: DictConfig | dict, prefix: str = "") -> dict[str, str]:
    """The resolved config as `a.b.c -> value` text (what MLflow stores as params)."""
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= flat_params(value, f"{name}.")
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return flat


# --------------------------------------------------------------------------- TensorBoard
class TensorBoardTracker(Tracker):
    """Event files under `<run dir>/<subdir>`: `tensorboard --logdir runs` shows every run.

    Args:
        subdir: the folder inside the run directory that holds the event files.
        images: log the run's PNGs (and a training run's sample grid) as images.
        name, requires, extra: the config file's own keys (`config.check_extras` reads them).
    """

    name = "tensorboard"

    def __init__(
        self,
        subdir: str = "tensorboard",
        images: bool = True,
        name: str = "tensorboard",
        requires: str | None = None,
        extra: str | None = None,
    ) -> None:
        super().__init__()
        if Path(subdir).name != subdir or subdir in ("", ".", ".."):
            raise ConfigError(f"logger.subdir={subdir!r}: expected one folder name inside the run directory")
        self.subdir, self.writer = subdir, None
        self.wants_pictures = bool(images)

    def _open(self, run_dir: Path, record: RunRecord, cfg: DictConfig) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the optional `tensorboard`

        self.writer = SummaryWriter(log_dir=str(run_dir / self.subdir), flush_secs=30)

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def _close(self, run_dir: Path, record: RunRecord, pictures: list[Path]) -> None:
        step = int(record.get("step") or 0)
        self.writer.add_text("record", "```\n" + json.dumps(record, indent=1, default=str)[:60000] + "\n```", step)
        for path in pictures if self.wants_pictures else []:
            picture = np.asarray(Image.open(path).convert("RGB"))
            self.writer.add_image(path.stem, picture, step, dataformats="HWC")
        self.writer.close()


# --------------------------------------------------------------------------- MLflow
class MLflowTracker(Tracker):
    """One MLflow run per segaudit run, tagged with its run id, phase, strategy, verdict.

    Args:
        tracking_uri: where runs go; None: a SQLite store `<paths.runs>/mlflow.db`.
        experiment: the MLflow experiment name.
        artifacts: log the record, the config and the PNGs as artifacts.
        http_timeout: seconds per request to a tracking server.
        http_retries: retries per request (few: a dead server must not hold up a run).
        name, requires, extra: the config file's own keys (`config.check_extras` reads them).
    """

    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str = "segaudit",
        artifacts: bool = True,
        http_timeout: int = 10,
        http_retries: int = 0,
        name: str = "mlflow",
        requires: str | None = None,
        extra: str | None = None,
    ) -> None:
        super().__init__()
        self.tracking_uri, self.experiment, self.artifacts = tracking_uri, str(experiment), bool(artifacts)
        self.http_timeout, self.http_retries = int(http_timeout), int(http_retries)
        self.client, self.run_id = None, None

    def _uri(self, cfg: DictConfig) -> tuple[str, str]:
        """The tracking URI and where a new experiment keeps its artifacts: both in the runs
        folder by default, never in the current directory."""
        root = runs_root(cfg).resolve()
        uri = str(self.tracking_uri) if self.tracking_uri else f"sqlite:///{root / 'mlflow.db'}"
        return uri, (root / "mlartifacts").as_uri()

    def _open(self, run_dir: Path, record: RunRecord, cfg: DictConfig) -> None:
        # Read per request by MLflow's HTTP client; a user's own setting wins.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(self.http_timeout))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(self.http_retries))
        from mlflow import MlflowClient  # needs the optional `mlflow`

        uri, artifact_root = self._uri(cfg)
        self.client = client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else client.create_experiment(self.experiment, artifact_location=artifact_root)
        )
        found = client.search_runs(
            [experiment_id], max_results=1, filter_string=f"tags.`segaudit.run_id` = '{record['run_id']}'"
        )
        self.run_id = (
            found[0].info.run_id
            if found
            else client.create_run(experiment_id, run_name=record["run_id"], tags=run_tags(record)).info.run_id
        )
        if not found:
            self._params(run_dir)

    def _params(self, run_dir: Path) -> None:
        from mlflow.entities import Param

        saved = run_dir / CONFIG
        if not saved.is_file():
            return
        params = [Param(key, value[:6000]) for key, value in flat_params(load_yaml(saved)).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, stamp, step) for key, value in values.items()])

    def _close(self, run_dir: Path, record: RunRecord, pictures: list[Path]) -> None:
        for key, value in run_tags(record).items():
            self.client.set_tag(self.run_id, key, value)
        if self.artifacts:
            for path in [run_dir / RECORD, run_dir / CONFIG]:
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path))
            for path in pictures:
                self.client.log_artifact(self.run_id, str(path), artifact_path="plots")
        status = {"completed": "FINISHED", "failed": "FAILED"}.get(record.get("status"), "KILLED")
        self.client.set_terminated(self.run_id, status=status)


# --------------------------------------------------------------------------- entry points
class NoTracker(Tracker):
    """`logger=none` (and every rank but the first under torchrun): every call does nothing."""

    name = "none"

    def _guard(self, action: Callable[[], None]) -> None:
        return


def build_tracker(cfg: DictConfig) -> Tracker:
    """The configured tracker (`logger` group; `_target_` checked against the allow-list)."""
    node = cfg.get("logger")
    if node is None or node.get("_target_") is None:
        return NoTracker()
    check_extras(cfg)  # a resumed run's saved config did not pass through `compose`
    try:
        return safe_instantiate(node, "logger", _convert_="all")
    except InstantiationException as err:  # Hydra wraps the tracker's own one-line error
        cause = err.__cause__ or err
        raise (
            cause if isinstance(cause, ConfigError) else ConfigError(f"logger={node.get('name')}: {first_line(cause)}")
        ) from None


def publish(cfg: DictConfig, run_dir: Path, record: RunRecord) -> None:
    """Mirror a finished record that has no training steps (a diagnose verdict, an audit,
    a validate or prior run) into the configured tracker."""
    tracker = build_tracker(cfg)
    if isinstance(tracker, NoTracker):
        return
    tracker.open(run_dir, record, cfg)
    tracker.close(run_dir, record)
