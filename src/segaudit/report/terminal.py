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

from segaudit.core.datafiles import spreadsheet_safe
from segaudit.core.errors import ConfigError, first_line
from segaudit.diagnostics.scope import COMPARE_COLUMNS
from segaudit.runs.records import ELSEWHERE, RECORD, RunRecord, json_safe

FORMATS = ("table", "json", "csv", "md")
# What the terminal table shows (the full table goes to --format/--export).
TERMINAL_COLUMNS = [
    ("run_id", "run"),
    ("dataset", "data"),
    ("model", "model"),
    ("seed", "seed"),
    ("strategy", "strategy"),
    ("conditions", "train/eval"),
    ("status", "status"),
    ("miou", "mIoU"),
    ("noise_miou", "noise"),
    ("gates", "gates"),
]
_FOLDABLE = ("dataset", "model", "seed")
_NUMERIC = ("miou", "macc", "noise_miou", "seed")
MARKDOWN_COLUMNS = [
    "run_id",
    "phase",
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
    "miou",
    "macc",
    "aacc",
    "gates",
]
# Caps that keep the terminal table within 100 columns; full values are in --format.
_MAX_WIDTH = {"run_id": 28, "dataset": 10, "model": 13, "conditions": 15, "strategy": 14}
_MIN_WIDTH = {"miou": 6, "noise_miou": 6, "macc": 6, "status": 9, "run_id": 22, "gates": 5}
_STATUS_STYLE = {"completed": "green", "running": "yellow", "paused": "cyan", "failed": "red"}


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


def no_runs_line(root: Path, where: list[str]) -> str:
    """Why the run table is empty: no runs under `root` at all, or none that `--where` kept."""
    if where and any(Path(root).glob(f"*/{RECORD}")):
        kept_by = " ".join(f"--where {w}" for w in where)
        return f"no runs match {kept_by} (runs under {root} exist; `segaudit report` lists them)"
    return f"no runs under {root}"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _conditions(record: RunRecord) -> str:
    train, evaluate = record.get("train_condition"), record.get("eval_condition")
    if _cell(train) == "-" and _cell(evaluate) == "-":
        return "-"
    return f"{train}/{evaluate}"


def rich_table(table: pd.DataFrame, title: str | None = None) -> Table:
    """The run table for the terminal, one row per run, within 100 columns.

    Columns whose value is the same in every row (dataset, model, seed) move into the
    caption, `gates` shows only when a validate run is listed; numbers are never truncated.
    """
    records = [dict(row._asdict(), conditions=_conditions(row._asdict())) for row in table.itertuples(index=False)]
    shared = [key for key in _FOLDABLE if records and len({str(r[key]) for r in records}) == 1]
    caption = "  ".join(f"{label}: {records[0][key]}" for key, label in TERMINAL_COLUMNS if key in shared)
    empty = [key for key in ("gates",) if all(_cell(r[key]) == "-" for r in records)]
    columns = [(key, label) for key, label in TERMINAL_COLUMNS if key not in shared + empty]
    out = Table(
        title=title,
        caption=caption or None,
        header_style="bold",
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 0),
        pad_edge=False,
    )
    rows = [[_cell(record[key]) for key, _ in columns] for record in records]
    widths = _fit_widths(columns, rows, TERMINAL_WIDTH)
    if columns and columns[0][0] == "run_id":  # ids differ at the end (seed, hash): cut the middle
        rows = [[_middle_cut(r[0], widths[0]), *r[1:]] for r in rows]
    for (key, label), width in zip(columns, widths):
        out.add_column(
            label, justify="right" if key in _NUMERIC else "left", no_wrap=True, overflow="ellipsis", width=width
        )
    for record, cells in zip(records, rows):
        style = _STATUS_STYLE.get(record["status"])
        out.add_row(*[f"[{style}]{c}[/]" if style and key == "status" else c for (key, _), c in zip(columns, cells)])
    return out


TERMINAL_WIDTH = 100


def _middle_cut(text: str, width: int) -> str:
    """`retrain-tier2-unet-cityscapes-s0-1a2b3c4d` -> `retrai…apes-s0-1a2b3c4d` when too wide."""
    if len(text) <= width:
        return text
    tail = (width - 1) * 2 // 3
    return f"{text[: width - 1 - tail]}…{text[-tail:]}"


def _fit_widths(columns: list[tuple[str, str]], rows: list[list[str]], budget: int) -> list[int]:
    """Column widths that fit `budget` characters: each column as wide as its widest cell
    (capped by `_MAX_WIDTH`), then the widest text columns give way first, never below
    their `_MIN_WIDTH` (or 6); numeric columns keep their full width."""
    widths = [max([len(label)] + [len(r[i]) for r in rows]) for i, (_, label) in enumerate(columns)]
    widths = [min(w, _MAX_WIDTH.get(key, w)) for w, (key, _) in zip(widths, columns)]
    floor = [w if key in _NUMERIC else min(w, _MIN_WIDTH.get(key, 6)) for w, (key, _) in zip(widths, columns)]
    excess = sum(widths) + len(columns) + 1 - budget  # one space between and around columns
    while excess > 0:
        shrinkable = [i for i, w in enumerate(widths) if w > floor[i]]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1
        excess -= 1
    return widths


def check_format(fmt: str, allowed: tuple[str, ...] = FORMATS) -> str:
    """`fmt` if it is one of `allowed`, else a `ConfigError` listing them."""
    if fmt not in allowed:
        raise ConfigError(f"--format {fmt}: choose one of {', '.join(allowed)}")
    return fmt


def _flat(frame: pd.DataFrame) -> pd.DataFrame:
    """List and dict cells (a run's `history`) as JSON text, for CSV, Markdown and parquet."""
    nested = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, (list, dict))).any()]
    return frame.assign(**{c: frame[c].map(lambda v: json.dumps(json_safe(v))) for c in nested})


def _csv_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """`_flat(frame)` with text a spreadsheet would run as a formula neutralised
    (`datafiles.spreadsheet_safe`); parquet and JSON keep the raw values."""
    flat = _flat(frame)
    text = [c for c in flat.columns if not pd.api.types.is_numeric_dtype(flat[c])]
    return flat.assign(**{c: flat[c].map(spreadsheet_safe) for c in text})


def format_frame(frame: pd.DataFrame, fmt: str, md_columns: list[str] | None = None) -> str:
    """Any table (the run table, a comparison, a diagnose's evidence) as `json` (an array
    of row objects, nested values kept), `csv` or `md` text (`md_columns` picks the
    Markdown columns: the run table's full width does not read well there)."""
    if fmt == "json":
        return json.dumps(json_safe(frame.to_dict(orient="records")), indent=1)
    if fmt == "csv":
        return _csv_cells(frame).to_csv(index=False)
    if fmt == "md":
        return _flat(frame[md_columns] if md_columns else frame).to_markdown(index=False, floatfmt=".2f")
    check_format(fmt, ("json", "csv", "md"))
    return ""


def export_frame(frame: pd.DataFrame, path: Path) -> None:
    """Write a table to `.csv` or `.parquet` (nested values as JSON text)."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ConfigError(f"--export {path}: use a .csv or .parquet file name")
    if not path.parent.expanduser().is_dir():
        raise ConfigError(f"--export {path}: folder {path.parent} does not exist")
    try:
        if suffix == ".csv":
            _csv_cells(frame).to_csv(path, index=False)
        else:
            _flat(frame).to_parquet(path, index=False)
    except OSError as err:  # a full disk, a read-only folder, a path through a dead link
        raise ConfigError(f"--export {path}: cannot write it ({first_line(err)})") from None


# --------------------------------------------------------------------------- panels
_VERDICT_STYLE = {"HEALTHY": "green", "PIPELINE_FAULT": "red", "SPATIAL_SHORTCUT": "yellow", "INCONCLUSIVE": "cyan"}


def _evidence_table(rows: list[tuple[str, float | None, str]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    table.add_column("what was trained / evaluated")
    table.add_column("mIoU", justify="right", no_wrap=True)
    table.add_column("run", no_wrap=True, overflow="ellipsis", max_width=30)
    for label, value, run in rows:
        table.add_row(label, _cell(value) if value is not None else "skipped", run or "")
    return table


def verdict_panel(record: RunRecord) -> Panel:
    """The diagnose verdict, the information evidence with its intervals, the learning
    curve, the budget, the decision gate and the mIoU evidence table, as one panel."""
    ev, gate = record["evidence"], record["gate"]
    rows = _evidence_rows(record)
    style = _VERDICT_STYLE.get(record["verdict"], "white")
    parts = [
        Text.assemble(("verdict: ", "bold"), (record["verdict"], f"bold {style}")),
        *[Text(f"  - {reason}") for reason in record["reasons"]],
        *_information_texts(ev),
        Text(
            f"content gain (real - prior): {ev['real'] - ev['prior']:+.2f} points"
            + _interval_suffix(ev, "miou_gain", 1)
        ),
        *([Text(f"classes: {record['classes']['line']}")] if record.get("classes") else []),
        *(consistency_texts(record["split"]) if record.get("split") else []),
        *_suspects_texts(record),
        *_curve_table(ev),
        *_budget_texts(ev),
        _evidence_table(rows),
        Text.assemble(
            ("decision gate ", "bold"),
            (f"({gate['preset']}): ", "dim"),
            (gate["decision"], "bold"),
            f" - {gate['why']}",
        ),
    ]
    if gate.get("next_checks"):
        parts.append(Text("the fix is in the data pipeline, not the loss. check next:", style="bold"))
        parts += [Text(f"  - {check}") for check in gate["next_checks"]]
    if gate.get("next_steps"):
        parts.append(Text("what would decide it, next:", style="bold"))
        parts += [Text(f"  - {step}") for step in gate["next_steps"]]
    for note in ev.get("notes") or []:
        parts.append(Text(f"note: {note}", style="yellow"))
    return Panel(Group(*parts), title=f"segaudit diagnose {record['run_id']}", border_style=style, expand=False)


def _interval_suffix(ev: dict, key: str, digits: int) -> str:
    value = (ev.get("information") or {}).get(key)
    return "" if not value else f" [{value['low']:+.{digits}f}, {value['high']:+.{digits}f}], 95% interval"


def _information_texts(ev: dict) -> list[Text]:
    """The bits-per-pixel decomposition of the baseline and of the shuffled-pair control."""
    texts = []
    for key, who in (("information", "baseline"), ("shuffled_information", "shuffled-pair control")):
        info = ev.get(key)
        if info:
            texts.append(
                Text(
                    f"{who}: of {info['entropy']['value']:.2f} bits/pixel, location explains "
                    f"{info['location']['value']:.2f}, content {_est(info['content'], 3)}, "
                    f"{info['remaining']['value']:.2f} remain"
                )
            )
    return texts


def _est(value: dict | None, digits: int = 2) -> str:
    if not value:
        return "-"
    return f"{value['value']:+.{digits}f} [{value['low']:+.{digits}f}, {value['high']:+.{digits}f}]"


def _curve_table(ev: dict) -> list[Table]:
    """The baseline's learning curve: per evaluated step, mIoU, content information and
    the advantage over the shuffled-pair control, each with its interval."""
    curve = ev.get("curve") or []
    if not curve:
        return []
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        header_style="bold",
        title="learning curve (95% intervals over val images)",
        title_justify="left",
    )
    for name in ("step", "mIoU", "content bits/pixel", "over control bits/pixel"):
        table.add_column(name, justify="right", no_wrap=True)
    for point in curve:
        miou = point["miou"]
        table.add_row(
            str(point["step"]),
            f"{miou['value']:.1f} [{miou['low']:.1f}, {miou['high']:.1f}]",
            _est(point["content"], 3),
            _est(point.get("versus_shuffled"), 3),
        )
    return [table]


def _budget_texts(ev: dict) -> list[Text]:
    budget = ev.get("budget")
    if not budget:
        return []
    path = " -> ".join(f"{s['step']} {s['verdict']}" for s in budget["stages"])
    how = {
        "decisive": "stopped: the evidence decided",
        "cap": "stopped: diagnose.max_iters reached",
        "fixed": "a fixed budget (train.iters)",
    }[budget["stopped"]]
    cost = budget.get("baseline_equivalents")
    cost_text = f"; cost {cost:.1f} baseline trainings" if cost else ""
    return [
        Text(f"budget ({budget['mode']}, schedule {budget['schedule']} steps): {path}; {how}{cost_text}", style="dim")
    ]


def _misaligned_texts(record: RunRecord) -> list[Text]:
    """The share of misaligned training pairs the baseline implies, with its interval."""
    found = record["evidence"].get("misaligned")
    if not found:
        return []
    share = found["share"]
    decided = any("of the training pairs look misaligned" in reason for reason in record.get("reasons", []))
    return [
        Text(
            f"training pairs against val pairs ({found['train_images']}): about {round(share['value'] * 100)}% "
            f"[{round(share['low'] * 100)}%, {round(share['high'] * 100)}%] "
            f"look misaligned (content on training pairs "
            f"{found['train_content']['value']:+.3f} bits/pixel, on val pairs {found['val_content']['value']:+.3f}, "
            f"on val masks fed another image {found['other_content']['value']:+.3f})",
            style="red" if decided else "",
        )
    ]


def _suspects_texts(record: RunRecord) -> list[Text]:
    ev = record["evidence"]
    if ev.get("suspect_share") is None:
        return _misaligned_texts(record)
    text = (
        f"pair scoring: {ev['suspect_flagged']} of {ev['suspect_pairs']} training pairs look "
        f"misaligned ({ev['suspect_share']:.1f}%"
    )
    if ev.get("suspect_val_share") is not None:  # the verdict counts the excess over val
        text += f"; val pairs: {ev['suspect_val_share']:.1f}%"
    text += ")"
    if ev["suspect_flagged"]:
        text += f"; list them: segaudit suspects --diagnose {record['run_id']}"
    # Red when the pair rule decided the verdict; yellow for flags below the rule's limit.
    decided = any(" training pairs (" in reason and "look misaligned" in reason for reason in record.get("reasons", []))
    return _misaligned_texts(record) + [
        Text(text, style="red" if decided else "yellow" if ev["suspect_flagged"] else "")
    ]


def _evidence_rows(record: RunRecord) -> list[tuple[str, float | None, str | None]]:
    ev, steps = record["evidence"], record["steps"]
    return [
        ("analytic prior (labels only, no image)", ev["prior"], steps.get("prior")),
        ("global-majority baseline", ev.get("majority"), steps.get("prior")),
        ("trained on real, evaluated on real", ev["real"], steps.get("baseline")),
        ("trained on real, evaluated on noise", ev.get("real_on_noise"), steps.get("baseline")),
        ("trained with shuffled pairing, evaluated on real", ev.get("shuffled"), steps.get("shuffled")),
        ("trained and evaluated on noise (sanity test)", ev.get("noise_trained"), steps.get("noise")),
        ("tier-1 diagnostic (consistency loss)", ev.get("tier1"), steps.get("tier1")),
    ]


def evidence_frame(record: RunRecord) -> pd.DataFrame:
    """A diagnose's evidence as a table (for `report diagnose ID --format json|csv|md`),
    with the verdict and decision on every row. Where the information evidence covers a
    row: the mIoU's 95% interval (`miou_low`, `miou_high`) and the content information in
    bits per pixel with its interval (`content_bits`, `content_low`, `content_high`)."""
    frame = pd.DataFrame(_evidence_rows(record), columns=["step", "miou", "run_id"])
    ev = record["evidence"]
    blocks = {2: ev.get("information"), 3: ev.get("noise_information"), 4: ev.get("shuffled_information")}
    columns = {
        name: [None] * len(frame) for name in ("miou_low", "miou_high", "content_bits", "content_low", "content_high")
    }
    for row, info in blocks.items():
        if info:
            columns["miou_low"][row], columns["miou_high"][row] = info["miou"]["low"], info["miou"]["high"]
            content = info["content"]
            columns["content_bits"][row], columns["content_low"][row], columns["content_high"][row] = (
                content["value"],
                content["low"],
                content["high"],
            )
    if ev.get("information"):
        prior = ev["information"]["prior_miou"]
        columns["miou_low"][0], columns["miou_high"][0] = prior["low"], prior["high"]
    return frame.assign(**columns, verdict=record["verdict"], decision=record["gate"]["decision"])


def prior_panel(record: RunRecord) -> Panel:
    """The analytic prior's scores, with per-class IoU."""
    prior = record["prior"]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    table.add_column("class")
    table.add_column("prior IoU", justify="right")
    for name, iou in zip(record["class_names"], record["metrics"]["iou"]):
        table.add_row(name, _cell(iou))
    lines = [
        Text(f"per-pixel prior mIoU {record['metrics']['miou']:.2f}   (reported: {prior['reported']})"),
        Text(f"global majority ({prior['majority_class_name']} everywhere) mIoU {prior['majority']['miou']:.2f}"),
        Text(
            f"{prior['n_train']} training label maps at {prior['size'][0]}x{prior['size'][1]}, "
            f"{prior['labels_per_s']:.0f} labels/s; scored on {prior['n_val']} val maps",
            style="dim",
        ),
        table,
    ]
    return Panel(Group(*lines), title=f"analytic prior {record['run_id']}", expand=False)


def audit_panel(record: RunRecord) -> Panel:
    """An audit's mIoU per input condition against the prior."""
    block = record["audit"]
    found = block.get("evidence") or {}
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    table.add_column("input")
    table.add_column("mIoU", justify="right")
    if found:
        table.add_column("95% interval", justify="right")
        table.add_column("content bits/pixel [95%]", justify="right")
    for name, value in block["miou"].items():
        measured = (found.get("inputs") or {}).get(name)
        extra = (
            [f"[{measured['miou']['low']:.1f}, {measured['miou']['high']:.1f}]", _est(measured["content"], 3)]
            if measured
            else []
        )
        table.add_row(name, _cell(value), *extra)
    table.add_row("analytic prior", _cell(block["prior_miou"]), *(["", ""] if found else []))
    lines = [
        Text(f"model {record['model']}/{record['encoder']} from {block['source']}", style="dim"),
        table,
        Text(f"content gain (real - prior): {block['content_gain']:+.2f} points"),
        Text(f"pixel agreement between predictions on real and on noise: {block['agreement_real_noise']:.1f}%"),
    ]
    flags = block.get("red_flags", [])
    lines += [Text(f"RED FLAG: {flag}", style="bold red") for flag in flags]
    if "red_flags" in block and not flags:
        lines.append(Text("no red flag: the model reads the image", style="bold green"))
    if block.get("finding"):
        lines.append(Text(block["finding"], style="bold"))
    lines.extend(probe_lines(block.get("probe")))
    return Panel(Group(*lines), title=f"audit {record['run_id']}", expand=False)


def inventory_table(results: list[dict]) -> Group:
    """One line per inventory row, then the rows that failed with their reasons."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold", title="segaudit audit inventory")
    for column in ("row", "source", "run_id", "status", "mIoU", "red flags"):
        table.add_column(column, justify="right" if column in ("row", "mIoU", "red flags") else "left", overflow="fold")
    for r in results:
        style = {"failed": "bold red", "skipped": "dim"}.get(r["status"], "")
        table.add_row(
            str(r["line"]),
            r["source"],
            r["run_id"] or "-",
            Text(r["status"], style=style),
            _cell(r["miou"]),
            "-" if r["red_flags"] is None else str(r["red_flags"]),
        )
    failed = [r for r in results if r["status"] == "failed"]
    elsewhere = [r for r in results if r["status"] == ELSEWHERE]
    lines = [
        table,
        Text(
            f"{len(results) - len(failed) - len(elsewhere)} of {len(results)} rows audited"
            f"{'' if not failed else f'; {len(failed)} failed:'}"
        ),
    ]
    lines += [Text(f"  row {r['line']} ({r['source']}): {r.get('error') or 'failed'}", style="red") for r in failed]
    if elsewhere:
        rows = ", ".join(str(r["line"]) for r in elsewhere)
        lines.append(
            Text(
                f"{len(elsewhere)} row(s) ({rows}) are being audited by another process right now; "
                f"run the same command again afterwards to list their results",
                style="yellow",
            )
        )
    return Group(*lines)


def probe_lines(probe: dict | None) -> list[Text]:
    """The preprocessing probe's suggestion (it never changes the audit's numbers)."""
    if not probe:
        return []
    found = probe["suggestion"]
    if found is None:
        return [
            Text(
                f"preprocessing probe: no usual card mistake scores higher on the first "
                f"{probe['images']} val images (best of {len(probe['tried'])} variants: "
                f"{max(probe['tried'].values()):.1f} vs {probe['baseline']:.1f}); the "
                f"model itself is the suspect",
                style="dim",
            )
        ]
    return [
        Text(
            f"preprocessing probe: this model scores {found['miou']:.1f} with {found['change']} "
            f"(vs {probe['baseline']:.1f} as given, first {probe['images']} val images); "
            f"set it in the card and audit again",
            style="bold yellow",
        )
    ]


_RESULT_STYLE = {"PASS": "bold green", "FAIL": "bold red", "SKIP": "dim"}


def validate_panel(record: RunRecord) -> Panel:
    """One validated model: each gate with its measured value, threshold and PASS/FAIL/SKIP."""
    block = record["validate"]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    table.add_column("gate", no_wrap=True, max_width=28, overflow="ellipsis")
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("threshold", max_width=26)
    table.add_column("result", no_wrap=True)
    table.add_column("detail", max_width=30)
    skipped = []
    for gate in block["gates"]:
        result = gate["result"]
        detail = gate["detail"]
        if result == "SKIP":  # the reason can be long: it goes under the table
            skipped.append(Text(f"{gate['name']} skipped: {detail}", style="dim"))
            detail = "see below"
        table.add_row(
            gate["name"], _cell(gate["value"]), gate["threshold"], Text(result, style=_RESULT_STYLE[result]), detail
        )
    counts = {r: sum(g["result"] == r for g in block["gates"]) for r in _RESULT_STYLE}
    style = "red" if counts["FAIL"] else "green"
    summary = Text.assemble(
        (("FAIL" if counts["FAIL"] else "PASS"), f"bold {style}"),
        f": {counts['PASS']} passed, {counts['FAIL']} failed, "
        f"{counts['SKIP']} skipped (gate preset {block['gate_preset']})",
    )
    lines = [
        Text(
            f"{record['model']}/{record['encoder']} on {record['dataset']}, val mIoU "
            f"{_cell(record['metrics']['miou'])}, from {block['source_run'] or block['source']}",
            style="dim",
        ),
        table,
        *skipped,
        summary,
    ]
    return Panel(Group(*lines), title=f"validate {record['run_id']}", border_style=style, expand=False)


def cross_matrix_table(matrix: dict) -> Table | None:
    """The train-on-A / evaluate-on-B mIoU matrix (rows: validated models); None when
    there is a single dataset."""
    columns = list(next(iter(matrix.values()), {}))
    if len(columns) < 2:
        return None
    title = "cross-dataset mIoU (rows: models, columns: evaluated on)"
    table = Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        header_style="bold",
        min_width=len(title),
    )
    table.add_column("model (run)", overflow="fold")
    for column in columns:
        table.add_column(column, justify="right", max_width=16, overflow="ellipsis")
    missing = False
    for name, row in matrix.items():
        missing |= any(row[c] != row[c] for c in columns)
        table.add_row(name, *[_cell(row[c]) if row[c] == row[c] else "n/a" for c in columns])
    if missing:
        table.caption = "n/a: the dataset's classes differ from the model's (give a label_map)"
        table.caption_justify = "left"
    return table


def consistency_texts(result: dict) -> list[Text]:
    """The split-consistency lines, yellow when train and val labels disagree."""
    from segaudit.measure.consistency import consistency_lines  # imports torch; `report` alone does not

    style = "" if result["consistent"] else "yellow"
    return [Text(line, style=style) for line in consistency_lines(result)]


def class_rich(frame: pd.DataFrame, run_id: str) -> Table:
    """The class table: shares, prior / real / noise IoU, content gain, location-only flag."""
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        header_style="bold",
        title_justify="left",
        title=f"classes of {run_id} (percent; gain = real - prior IoU)",
    )
    for label in ("class", "train %", "val %", "prior IoU", "real IoU", "noise IoU", "gain", ""):
        table.add_column(label, justify="left" if label in ("class", "") else "right")
    for _, row in frame.iterrows():
        flag = Text("location only", style="yellow") if row.location_only else Text("")
        table.add_row(
            row["class"],
            _cell(row.train_share),
            _cell(row.val_share),
            _cell(row.prior_iou),
            _cell(row.real_iou),
            _cell(row.noise_iou),
            "-" if row.content_gain != row.content_gain else f"{row.content_gain:+.1f}",
            flag,
        )
    return table


def backbone_probe_panel(record: RunRecord, min_gain: float) -> Panel:
    """`segaudit probe`: the linear probe on the trained encoder, on a random one, and the prior."""
    block = record["probe"]
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    table.add_column("linear head on")
    table.add_column("mIoU", justify="right")
    table.add_row("this model's frozen encoder", _cell(block["encoder_miou"]))
    table.add_row("a random encoder, same architecture", _cell(block["random_miou"]))
    table.add_row("analytic prior (no image)", _cell(block["prior_miou"]))
    gain = block["content_over_random"]
    if gain >= min_gain:
        verdict = Text(
            f"the encoder holds {gain:+.1f} points of content beyond a random one: it can serve "
            f"as a frozen backbone under a corrected head",
            style="bold green",
        )
    else:
        verdict = Text(
            f"the encoder holds {gain:+.1f} points beyond a random one (< {min_gain:g}): it learned "
            f"no usable content; retrain it",
            style="bold red",
        )
    lines = [
        Text(f"model {record['model']}/{record['encoder']} from {block['source']}", style="dim"),
        table,
        verdict,
        Text(
            f"{block['iters']} head steps on the {block['features']} features; run id {record['run_id']}", style="dim"
        ),
    ]
    return Panel(Group(*lines), title=f"probe {record['run_id']}", expand=False)


SUSPECT_COLUMNS = ["stem", "split", "score", "own_fit", "prior_fit", "flagged", "best_match", "best_fit"]


def suspects_rich(record: RunRecord, pairs: list[dict], top: int) -> Group:
    """The flagged pairs (lowest score first, at most `top`) and the summary line."""
    from segaudit.diagnostics.suspects import summary_line  # imports torch; `report` alone does not

    flagged = [p for p in pairs if p["flagged"]]
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        header_style="bold",
        title=f"suspect pairs ({record['run_id']})",
        title_justify="left",
    )
    for label in ("pair", "score", "fits own image", "fits prior", "fits best"):
        table.add_column(label, justify="left" if label in ("pair", "fits best") else "right")
    for p in flagged[:top]:
        best = f"image {p['best_match']} ({p['best_fit']:.0f}%)" if p.get("best_match") else "-"
        table.add_row(f"{p['split']}/{p['stem']}", _cell(p["score"]), _cell(p["own_fit"]), _cell(p["prior_fit"]), best)
    lines = [table] if flagged else []
    if len(flagged) > top:
        lines.append(Text(f"... and {len(flagged) - top} more (--top N, --format csv)", style="dim"))
    matched = [p for p in flagged if p.get("best_match")]
    lines += [Text(f"mask of {p['stem']} fits image {p['best_match']}") for p in matched[:3]]
    style = "bold red" if record["suspects"]["train"]["flagged"] else "bold green"
    lines.append(Text(summary_line(record["suspects"]), style=style))
    return Group(*lines)


def check_panel(report, class_names: list[str]) -> Panel:
    """`data check`: a summary per split, the class pixel histogram, the alignment probe."""
    splits = Table(box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold")
    for label in ("split", "pairs", "orphans", "bad files", "ignore %", "image size (WxH)"):
        splits.add_column(label, justify="left" if label in ("split", "image size (WxH)") else "right")
    for s in report.summaries:
        splits.add_row(s.split, str(s.pairs), str(s.orphans), str(s.bad_files), _cell(s.ignore_share), s.sizes_text)
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
    warnings = sum(not p.error and p.level != "info" for p in report.problems)
    status = (
        Text(f"{errors} error(s), {warnings} warning(s)", style="bold red")
        if errors
        else Text(f"no errors ({warnings} warning(s))", style="bold green")
    )
    parts = [status, splits, classes]
    if report.alignment is not None:
        parts.append(
            Text(
                f"alignment probe: {report.alignment:.2f}% of image/mask pixels stay "
                f"aligned through the train-time transforms"
            )
        )
    if report.consistency is not None:
        parts += consistency_texts(report.consistency)
    return Panel(Group(*parts), title="segaudit data check", expand=False)


# --------------------------------------------------------------------------- before / after
def compare_rich(compared: pd.DataFrame, by: str, baseline: str) -> Table:
    out = Table(
        title=f"before / after by {by} (delta against {by}={baseline})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        header_style="bold",
    )
    labels = {"group": by, "miou": "mIoU", "noise_miou": "on noise", "content_gain": "gain", "delta": "delta"}
    for column in COMPARE_COLUMNS:
        numeric = column not in ("model", "dataset", "group")
        out.add_column(
            labels.get(column, column),
            justify="right" if numeric else "left",
            no_wrap=True,
            overflow="ellipsis",
            max_width=16 if not numeric else None,
        )
    for row in compared.itertuples(index=False):
        cells = [_cell(getattr(row, c)) for c in COMPARE_COLUMNS]
        delta = row.delta
        if isinstance(delta, float) and not math.isnan(delta) and delta != 0:
            cells[-1] = f"[{'green' if delta > 0 else 'red'}]{delta:+.2f}[/]"
        out.add_row(*cells)
    return out


# --------------------------------------------------------------------------- scope
def scope_rich(result: dict) -> Group:
    """The scope analysis: one table per grouping, its spread, and the verdict line."""
    parts = []
    for name, grouping in result["groupings"].items():
        table = Table(
            title=f"by {name}", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, header_style="bold"
        )
        table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=40)
        for label in ("count", "mean mIoU", "std"):
            table.add_column(label, justify="right")
        for group in grouping["groups"]:
            table.add_row(group["name"], str(group["count"]), _cell(group["mean"]), _cell(group["std"]))
        parts.append(table)
        spread = _cell(grouping["spread"])
        limit = grouping["threshold"]
        flag = (
            (" [bold red]< " + f"{limit:g}: suspiciously uniform[/]")
            if grouping["flag"]
            else (f" (threshold {limit:g})" if limit is not None else "")
        )
        parts.append(
            Text.from_markup(
                f"spread across {name} groups (std of means): {spread}, range {_cell(grouping['range'])}{flag}"
            )
        )
    overall = result["overall"]
    parts.append(Text(f"{result['runs']} runs: mean {_cell(overall['mean'])}, std {_cell(overall['std'])}"))
    parts.append(
        Text.from_markup(
            "[bold red]systematic problem: results barely depend on the strategy or dataset[/]"
            if result["systematic"]
            else "[bold green]no systematic uniformity flagged[/]"
        )
    )
    return Group(*parts)


SCOPE_FORMATS = ("table", "json", "md")


def format_scope(result: dict, fmt: str) -> str:
    """The scope analysis as `json` (the full result) or `md` text."""
    check_format(fmt, SCOPE_FORMATS)
    return json.dumps(json_safe(result), indent=1) if fmt == "json" else scope_markdown(result)


def scope_markdown(result: dict) -> str:
    lines = []
    for name, grouping in result["groupings"].items():
        frame = pd.DataFrame(grouping["groups"]).rename(columns={"name": name})
        lines += [
            f"### by {name}",
            "",
            frame.to_markdown(index=False, floatfmt=".2f"),
            "",
            f"spread (std of group means): {_cell(grouping['spread'])}; range "
            f"{_cell(grouping['range'])}; flagged: {grouping['flag']}",
            "",
        ]
    lines.append(f"systematic problem flagged: {result['systematic']}")
    return "\n".join(lines)
