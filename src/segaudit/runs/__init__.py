"""Run records: one folder per run with `record.json`, `config.yaml` and a checkpoint,
replaced atomically and locked; the pandas run table read from them; trackers that mirror
records to TensorBoard or MLflow.

`from segaudit import runs` gives the record store (`runs.records`), the module most of
segaudit writes through.
"""

from segaudit.runs.records import (
    CHECKPOINT,
    CONFIG,
    ELSEWHERE,
    LOG,
    NOT_TRAINING,
    RECORD,
    RunRecord,
    atomic_write,
    check_new_run_id,
    check_run_id,
    claim,
    iter_records,
    json_safe,
    load_table,
    now,
    open_run,
    read_gate_record,
    read_record,
    remove_stale_temp_files,
    run_lock,
    runs_root,
    table_of,
    write_record,
)

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "ELSEWHERE",
    "LOG",
    "NOT_TRAINING",
    "RECORD",
    "RunRecord",
    "atomic_write",
    "check_new_run_id",
    "check_run_id",
    "claim",
    "iter_records",
    "json_safe",
    "load_table",
    "now",
    "open_run",
    "read_gate_record",
    "read_record",
    "remove_stale_temp_files",
    "run_lock",
    "runs_root",
    "table_of",
    "write_record",
]
