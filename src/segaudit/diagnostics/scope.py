"""`segaudit scope`: the investigation's scope analysis over many trained models.

Group the runs by strategy, by model and by dataset; per group the count, mean and
sample standard deviation of mIoU; per grouping the spread between groups (the sample
standard deviation of the group means, and their range). A spread that is too small
across strategies or datasets — every strategy lands on the same number — was the
investigation's first hint of a systematic problem.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from segaudit.core.errors import ConfigError, first_line
from segaudit.runs.records import NOT_TRAINING, load_table, runs_root

GROUPINGS = ("strategy", "model", "dataset")
REQUIRED = ("strategy", "model", "dataset", "miou")


def read_results(path: Path) -> pd.DataFrame:
    """An imported results table (CSV or parquet) with at least strategy, model, dataset, miou."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"--table {path}: file not found")
    try:
        table = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    except Exception as err:  # noqa: BLE001 - pandas raises many types for bad files
        raise ConfigError(f"--table {path}: cannot read ({first_line(err)})") from None
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ConfigError(f"--table {path}: missing column(s) {', '.join(missing)} (needs {', '.join(REQUIRED)})")
    table["miou"] = pd.to_numeric(table["miou"], errors="coerce")
    return table


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def scope(table: pd.DataFrame, thresholds: DictConfig) -> dict:
    """Group statistics, spreads and the systematic-problem flags.

    Returns:
        `{"runs": n, "overall": {...}, "groupings": {name: {"groups": [{"name", "count",
        "mean", "std"}], "spread": std of group means, "range": max - min, "threshold",
        "flag"}}, "systematic": bool}`; std is the sample std (ddof=1), None for one value.
    """
    table = table.dropna(subset=["miou"])
    out = {
        "runs": int(len(table)),
        "overall": {
            "count": int(len(table)),
            "mean": _number(table.miou.mean()),
            "std": _number(table.miou.std(ddof=1)),
        },
        "groupings": {},
    }
    limits = {
        "strategy": thresholds.get("strategy_spread_min"),
        "dataset": thresholds.get("dataset_spread_min"),
        "model": None,
    }
    for name in GROUPINGS:
        stats = table.groupby(name)["miou"].agg(["count", "mean", "std"])
        means = stats["mean"]
        spread = _number(means.std(ddof=1)) if len(means) > 1 else None
        limit = limits[name]
        out["groupings"][name] = {
            "groups": [
                {
                    "name": str(index),
                    "count": int(row["count"]),
                    "mean": _number(row["mean"]),
                    "std": _number(row["std"]),
                }
                for index, row in stats.iterrows()
            ],
            "spread": spread,
            "range": _number(means.max() - means.min()) if len(means) else None,
            "threshold": limit,
            "flag": bool(limit is not None and spread is not None and spread < float(limit)),
        }
    out["systematic"] = any(g["flag"] for g in out["groupings"].values())
    return out


def training_runs(table: pd.DataFrame) -> pd.DataFrame:
    """The completed runs of a run table that trained a model (no prior, audit, ...)."""
    return table[(table.status == "completed") & ~table.phase.isin(NOT_TRAINING)]


def run_scope(
    cfg: DictConfig, table_file: Path | None = None, table: pd.DataFrame | None = None, phase: str | None = None
) -> dict:
    """`segaudit scope`: over an imported results file, the given run table (`report
    --scope` passes the runs its `--where` kept), or the completed runs under `paths.runs`:
    the training runs, or with `phase` the completed runs of that phase (`audit`: the
    investigation's scope analysis from audits of models trained elsewhere)."""
    if table_file is not None:
        table = read_results(table_file)
    else:
        table = load_table(runs_root(cfg)) if table is None else table
        if phase is None:
            table = training_runs(table)
        elif not table.empty:
            table = table[(table.status == "completed") & (table.phase == phase)]
    if table.empty:
        raise ConfigError("scope: no runs with an mIoU to analyse (give --table FILE or train some)")
    return scope(table, cfg.gate.scope)


# --------------------------------------------------------------------------- before / after
COMPARE_COLUMNS = ["model", "dataset", "group", "runs", "miou", "noise_miou", "prior", "content_gain", "delta"]


def compare_table(table: pd.DataFrame, by: str = "strategy", baseline: str = "baseline") -> pd.DataFrame:
    """Before/after: completed runs trained and evaluated on real images, grouped by
    (model, dataset, `by`), with mean mIoU on real and on noise input, the dataset's
    analytic prior (its latest `prior` run), content gain (mIoU - prior) and the delta
    against the `baseline` group of the same model and dataset.

    Raises:
        ConfigError: `by` is not a column of the run table.
    """
    if by not in table.columns:
        raise ConfigError(f"--compare {by}: unknown column (columns: {', '.join(table.columns)})")
    done = table[table.status == "completed"]
    trained = done[~done.phase.isin(NOT_TRAINING) & (done.train_condition == "real") & (done.eval_condition == "real")]
    if trained.empty:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    groups = sorted(trained[by].astype(str).unique())
    if baseline not in groups:
        raise ConfigError(
            f"--baseline {baseline}: no {by} group of that name among the compared runs ({', '.join(groups)})"
        )
    priors = done[done.phase == "prior"].groupby("dataset")["miou"].last()
    grouped = (
        trained.assign(group=trained[by].astype(str))
        .groupby(["model", "dataset", "group"], as_index=False)
        .agg(runs=("run_id", "count"), miou=("miou", "mean"), noise_miou=("noise_miou", "mean"))
    )
    grouped["prior"] = grouped["dataset"].map(priors).astype(float)
    grouped["content_gain"] = grouped["miou"] - grouped["prior"]
    base = grouped[grouped.group == baseline].set_index(["model", "dataset"])["miou"]
    keys = pd.MultiIndex.from_frame(grouped[["model", "dataset"]])
    grouped["delta"] = grouped["miou"].to_numpy() - base.reindex(keys).to_numpy()
    return grouped[COMPARE_COLUMNS]
