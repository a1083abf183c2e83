"""The last step of every command that measures: the total time, the record replaced
atomically, the trackers told. Diagnostics and measurements return results; the workflows
put them in a record and finish it here."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from segaudit import runs
from segaudit.runs.trackers import publish


def record_finished(
    cfg: DictConfig, folder: Path, record: runs.RunRecord, seconds: float | None = None
) -> runs.RunRecord:
    """Write `record` (completed; `seconds`, when given, as its total time) into `folder`
    and mirror it into the configured tracker.

    Returns:
        The record as written.
    """
    if seconds is not None:
        record["timings"]["total_s"] = seconds
    runs.write_record(folder, record)
    publish(cfg, folder, record)
    return record
