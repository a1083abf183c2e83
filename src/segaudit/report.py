"""Rendering the run table: rich tables for people, JSON/CSV/Markdown for pasting and tools."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from segaudit.errors import ConfigError
from segaudit.runs import json_safe

FORMATS = ("table", "json", "csv", "md")
# What the terminal table shows (the full table goes to --format/--export).
TERMINAL_COLUMNS = [
    ("run_id", "run"), ("dataset", "data"), ("model", "model"), ("seed", "seed"),
    ("strategy", "strategy"), ("conditions", "train/eval"), ("status", "status"),
    ("miou", "mIoU"), ("noise_miou", "noise"),
]
_FOLDABLE = ("dataset", "model", "seed")
_NUMERIC = ("miou", "macc", "noise_miou", "seed")
MARKDOWN_COLUMNS = [
    "run_id", "phase", "dataset", "model", "encoder", "loss", "train_condition",
    "eval_condition", "strategy", "seed", "status", "step", "miou", "macc", "aacc",
]
# Caps that keep the terminal table within 100 columns; full values are in --format.
_MAX_WIDTH = {"run_id": 28, "dataset": 10, "model": 13, "conditions": 15, "strategy": 14}
_MIN_WIDTH = {"miou": 6, "noise_miou": 6, "macc": 6, "status": 9, "run_id": 16}
_STATUS_STYLE = {"completed": "green", "running": "yellow", "failed": "red"}


def filter_table(table: pd.DataFrame, where: list[str]) -> pd.DataFrame:
    """Keep rows where every `key=value` holds (values compared as text, numbers as numbers).

    Raises:
        ConfigError: a condition without `=` or naming an unknown column.
    """
    for cond in where:
        key, sep, value = cond.partition("=")
        if not sep:
            raise ConfigError(f"--where {cond!r}: expected key=value")
        if key not in table.columns:
            raise ConfigError(f"--where {key}: unknown column (columns: {', '.join(table.columns)})")
        column = table[key]
        if pd.api.types.is_numeric_dtype(column):
            try:
                table = table[column == float(value)]
                continue
            except ValueError:
                raise ConfigError(f"--where {cond!r}: {key} is numeric") from None
        table = table[column.astype(str) == value]
    return table


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _conditions(record: dict) -> str:
    train, evaluate = record.get("train_condition"), record.get("eval_condition")
    if _cell(train) == "-" and _cell(evaluate) == "-":
        return "-"
    return f"{train}/{evaluate}"


def rich_table(table: pd.DataFrame, title: str | None = None) -> Table:
    """The run table for the terminal, one row per run, within 100 columns.

    Columns whose value is the same in every row (dataset, model, seed) move into the
    caption; numbers are never truncated.
    """
    records = [dict(row._asdict(), conditions=_conditions(row._asdict()))
               for row in table.itertuples(index=False)]
    shared = [key for key in _FOLDABLE
              if records and len({str(r[key]) for r in records}) == 1]
    caption = "  ".join(f"{label}: {records[0][key]}" for key, label in TERMINAL_COLUMNS
                        if key in shared)
    columns = [(key, label) for key, label in TERMINAL_COLUMNS if key not in shared]
    out = Table(title=title, caption=caption or None, header_style="bold", title_justify="left",
                caption_justify="left", box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False)
    for key, label in columns:
        numeric = key in _NUMERIC
        out.add_column(label, justify="right" if numeric else "left", no_wrap=True,
                       overflow="ellipsis", max_width=_MAX_WIDTH.get(key),
                       min_width=_MIN_WIDTH.get(key))
    for record in records:
        cells = []
        for key, _ in columns:
            cell = _cell(record[key])
            style = _STATUS_STYLE.get(record["status"]) if key == "status" else None
            cells.append(f"[{style}]{cell}[/]" if style else cell)
        out.add_row(*cells)
    return out


def format_table(table: pd.DataFrame, fmt: str) -> str:
    """The table as `json` (array of run objects with history), `csv` or `md` text."""
    if fmt == "json":
        return json.dumps(json_safe(table.to_dict(orient="records")), indent=1)
    flat = table.assign(history=table["history"].map(lambda h: json.dumps(json_safe(h))))
    if fmt == "csv":
        return flat.to_csv(index=False)
    if fmt == "md":
        shown = flat[MARKDOWN_COLUMNS]
        return shown.to_markdown(index=False, floatfmt=".2f")
    raise ConfigError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")


def format_frame(frame: pd.DataFrame, fmt: str) -> str:
    """Any derived table (no history column) as json, csv or md text."""
    if fmt == "json":
        return json.dumps(json_safe(frame.to_dict(orient="records")), indent=1)
    if fmt == "csv":
        return frame.to_csv(index=False)
    if fmt == "md":
        return frame.to_markdown(index=False, floatfmt=".2f")
    raise ConfigError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")


def export_table(table: pd.DataFrame, path: Path) -> None:
    """Write the full table to `.csv` or `.parquet` (history kept as JSON text)."""
    flat = table.assign(history=table["history"].map(lambda h: json.dumps(json_safe(h))))
    suffix = path.suffix.lower()
    if suffix == ".csv":
        flat.to_csv(path, index=False)
    elif suffix == ".parquet":
        flat.to_parquet(path, index=False)
    else:
        raise ConfigError(f"--export {path}: use a .csv or .parquet file name")


# --------------------------------------------------------------------------- panels
_VERDICT_STYLE = {"HEALTHY": "green", "PIPELINE_FAULT": "red", "SPATIAL_SHORTCUT": "yellow"}


def _evidence_table(rows: list[tuple[str, float | None, str]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    table.add_column("what was trained / evaluated")
    table.add_column("mIoU", justify="right", no_wrap=True)
    table.add_column("run", no_wrap=True, overflow="ellipsis", max_width=30)
    for label, value, run in rows:
        table.add_row(label, _cell(value) if value is not None else "skipped", run or "")
    return table


def verdict_panel(record: dict) -> Panel:
    """The diagnose verdict, the decision gate and the evidence table, as one panel."""
    ev, steps, gate = record["evidence"], record["steps"], record["gate"]
    rows = [
        ("analytic prior (labels only, no image)", ev["prior"], steps.get("prior")),
        ("global-majority baseline", ev.get("majority"), steps.get("prior")),
        ("trained on real, evaluated on real", ev["real"], steps.get("baseline")),
        ("trained on real, evaluated on noise", ev.get("real_on_noise"), steps.get("baseline")),
        ("trained with shuffled pairing, evaluated on real", ev.get("shuffled"), steps.get("shuffled")),
        ("trained and evaluated on noise (sanity test)", ev.get("noise_trained"), steps.get("noise")),
        ("tier-1 diagnostic (consistency loss)", ev.get("tier1"), steps.get("tier1")),
    ]
    style = _VERDICT_STYLE.get(record["verdict"], "white")
    parts = [
        Text.assemble(("verdict: ", "bold"), (record["verdict"], f"bold {style}")),
        *[Text(f"  - {reason}") for reason in record["reasons"]],
        Text(f"content gain (real - prior): {ev['real'] - ev['prior']:+.2f} points"),
        _evidence_table(rows),
        Text.assemble(("decision gate ", "bold"), (f"({gate['preset']}): ", "dim"),
                      (gate["decision"], "bold"), f" - {gate['why']}"),
    ]
    if gate.get("next_checks"):
        parts.append(Text("the fix is in the data pipeline, not the loss. check next:", style="bold"))
        parts += [Text(f"  - {check}") for check in gate["next_checks"]]
    for note in ev.get("notes") or []:
        parts.append(Text(f"note: {note}", style="yellow"))
    return Panel(Group(*parts), title=f"segaudit diagnose {record['run_id']}", border_style=style,
                 expand=False)


def prior_panel(record: dict) -> Panel:
    """The analytic prior's scores, with per-class IoU."""
    prior = record["prior"]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    table.add_column("class")
    table.add_column("prior IoU", justify="right")
    for name, iou in zip(record["class_names"], record["metrics"]["iou"]):
        table.add_row(name, _cell(iou))
    lines = [
        Text(f"per-pixel prior mIoU {record['metrics']['miou']:.2f}   (reported: {prior['reported']})"),
        Text(f"global majority ({prior['majority_class_name']} everywhere) mIoU "
             f"{prior['majority']['miou']:.2f}"),
        Text(f"{prior['n_train']} training label maps at {prior['size'][0]}x{prior['size'][1]}, "
             f"{prior['labels_per_s']:.0f} labels/s; scored on {prior['n_val']} val maps", style="dim"),
        table,
    ]
    return Panel(Group(*lines), title=f"analytic prior {record['run_id']}", expand=False)


def audit_panel(record: dict) -> Panel:
    """An audit's mIoU per input condition against the prior."""
    block = record["audit"]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    table.add_column("input")
    table.add_column("mIoU", justify="right")
    for name, value in block["miou"].items():
        table.add_row(name, _cell(value))
    table.add_row("analytic prior", _cell(block["prior_miou"]))
    lines = [
        Text(f"model {record['model']}/{record['encoder']} from {block['source']}", style="dim"),
        table,
        Text(f"content gain (real - prior): {block['content_gain']:+.2f} points"),
        Text(f"pixel agreement between predictions on real and on noise: "
             f"{block['agreement_real_noise']:.1f}%"),
    ]
    return Panel(Group(*lines), title=f"audit {record['run_id']}", expand=False)


def check_panel(report, class_names: list[str]) -> Panel:
    """`data check`: a summary per split, the class pixel histogram, the alignment probe."""
    splits = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    for label in ("split", "pairs", "orphans", "bad files", "ignore %"):
        splits.add_column(label, justify="left" if label == "split" else "right")
    for s in report.summaries:
        splits.add_row(s.split, str(s.pairs), str(s.orphans), str(s.bad_files), _cell(s.ignore_share))
    classes = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    classes.add_column("class (% of labelled pixels)")
    for s in report.summaries:
        classes.add_column(s.split, justify="right")
    for index, name in enumerate(class_names):
        row = []
        for s in report.summaries:
            total = max(s.labelled_pixels, 1)
            row.append(f"{100 * s.class_pixels[index] / total:.2f}" if s.class_pixels else "-")
        classes.add_row(name, *row)
    errors = len(report.errors)
    status = (Text(f"{errors} error(s), {len(report.problems) - errors} warning(s)", style="bold red")
              if errors else Text(f"no errors ({len(report.problems)} warning(s))", style="bold green"))
    parts = [status, splits, classes]
    if report.alignment is not None:
        parts.append(Text(f"alignment probe: {report.alignment:.2f}% of image/mask pixels stay "
                          f"aligned through the train-time transforms"))
    return Panel(Group(*parts), title="segaudit data check", expand=False)


# --------------------------------------------------------------------------- before / after
COMPARE_COLUMNS = ["model", "dataset", "group", "runs", "miou", "noise_miou", "prior", "content_gain",
                   "delta"]


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
    trained = done[(done.phase != "prior") & (done.phase != "gate") & (done.phase != "audit")
                   & (done.train_condition == "real") & (done.eval_condition == "real")]
    if trained.empty:
        return pd.DataFrame(columns=COMPARE_COLUMNS)
    priors = done[done.phase == "prior"].groupby("dataset")["miou"].last()
    grouped = (trained.assign(group=trained[by].astype(str))
               .groupby(["model", "dataset", "group"], as_index=False)
               .agg(runs=("run_id", "count"), miou=("miou", "mean"), noise_miou=("noise_miou", "mean")))
    grouped["prior"] = grouped["dataset"].map(priors).astype(float)
    grouped["content_gain"] = grouped["miou"] - grouped["prior"]
    base = grouped[grouped.group == baseline].set_index(["model", "dataset"])["miou"]
    keys = pd.MultiIndex.from_frame(grouped[["model", "dataset"]])
    grouped["delta"] = grouped["miou"].to_numpy() - base.reindex(keys).to_numpy()
    return grouped[COMPARE_COLUMNS]


def compare_rich(compared: pd.DataFrame, by: str, baseline: str) -> Table:
    out = Table(title=f"before / after by {by} (delta against {by}={baseline})", title_justify="left",
                box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    labels = {"group": by, "miou": "mIoU", "noise_miou": "on noise", "content_gain": "gain",
              "delta": "delta"}
    for column in COMPARE_COLUMNS:
        numeric = column not in ("model", "dataset", "group")
        out.add_column(labels.get(column, column), justify="right" if numeric else "left",
                       no_wrap=True, overflow="ellipsis", max_width=16 if not numeric else None)
    for row in compared.itertuples(index=False):
        cells = [_cell(getattr(row, c)) for c in COMPARE_COLUMNS]
        delta = getattr(row, "delta")
        if isinstance(delta, float) and not math.isnan(delta) and delta != 0:
            cells[-1] = f"[{'green' if delta > 0 else 'red'}]{delta:+.2f}[/]"
        out.add_row(*cells)
    return out


# --------------------------------------------------------------------------- scope
def scope_rich(result: dict) -> Group:
    """The scope analysis: one table per grouping, its spread, and the verdict line."""
    parts = []
    for name, grouping in result["groupings"].items():
        table = Table(title=f"by {name}", title_justify="left", box=box.SIMPLE_HEAD,
                      pad_edge=False, header_style="bold")
        table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=40)
        for label in ("count", "mean mIoU", "std"):
            table.add_column(label, justify="right")
        for group in grouping["groups"]:
            table.add_row(group["name"], str(group["count"]), _cell(group["mean"]), _cell(group["std"]))
        parts.append(table)
        spread = _cell(grouping["spread"])
        limit = grouping["threshold"]
        flag = (" [bold red]< " + f"{limit:g}: suspiciously uniform[/]") if grouping["flag"] else (
            f" (threshold {limit:g})" if limit is not None else "")
        parts.append(Text.from_markup(f"spread across {name} groups (std of means): {spread}, "
                                      f"range {_cell(grouping['range'])}{flag}"))
    overall = result["overall"]
    parts.append(Text(f"{result['runs']} runs: mean {_cell(overall['mean'])}, std {_cell(overall['std'])}"))
    parts.append(Text.from_markup(
        "[bold red]systematic problem: results barely depend on the strategy or dataset[/]"
        if result["systematic"] else "[bold green]no systematic uniformity flagged[/]"))
    return Group(*parts)


def scope_markdown(result: dict) -> str:
    lines = []
    for name, grouping in result["groupings"].items():
        frame = pd.DataFrame(grouping["groups"]).rename(columns={"name": name})
        lines += [f"### by {name}", "", frame.to_markdown(index=False, floatfmt=".2f"), "",
                  f"spread (std of group means): {_cell(grouping['spread'])}; range "
                  f"{_cell(grouping['range'])}; flagged: {grouping['flag']}", ""]
    lines.append(f"systematic problem flagged: {result['systematic']}")
    return "\n".join(lines)
