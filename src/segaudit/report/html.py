"""`segaudit report html FILE`: one self-contained page for the people who decide on a
retrain and will not run a command.

It holds, for the runs `--where` / `--diagnose` select: a summary in plain words (the
verdict, what it means, what to do next), each diagnose's evidence with the analytic prior
as the reference line, its pictures, the class table, the validate gates, the scope
analysis, the sortable run table, and the command, package versions and config behind
every run. Pictures are embedded PNGs, the styles and the sorting script are inline, and
nothing is fetched: the file reads the same offline and as a mail attachment. Jinja2
renders it with autoescaping, so text from a record or config is shown, never run.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import jinja2
import pandas as pd
from omegaconf import DictConfig

from segaudit import __version__, runs
from segaudit.core.errors import ConfigError
from segaudit.diagnostics.scope import run_scope
from segaudit.diagnostics.verdict import HEALTHY, INCONCLUSIVE, PIPELINE_FAULT, SPATIAL_SHORTCUT
from segaudit.measure.consistency import consistency_lines
from segaudit.report.pictures import diagnose_figures, prior_overview_figure
from segaudit.report.terminal import MARKDOWN_COLUMNS, evidence_frame, filter_table

TEMPLATE = "report.html.j2"
_STYLE = {HEALTHY: "good", PIPELINE_FAULT: "bad", SPATIAL_SHORTCUT: "warn", INCONCLUSIVE: "open"}
_HEADLINE = {
    HEALTHY: "The model reads the image.",
    PIPELINE_FAULT: "The model is not learning from images that match their labels.",
    SPATIAL_SHORTCUT: "The model predicts where classes usually sit, not what the image shows.",
    INCONCLUSIVE: "Not decided yet: the evidence cannot tell these cases apart at this budget.",
}
# Which of a diagnose's pictures the page shows, in order, with what a reader should see.
_PICTURES = [
    (
        "curve_",
        "The learning curve, with 95% intervals over the val images. Left: mIoU of the model "
        "trained on real pairs and of the control trained on shuffled pairs, against the "
        "analytic prior. Right: what the image adds, in bits per pixel, over the prior and over "
        "the control. A model that reads the image pulls away from both; one still climbing "
        "is undertrained, not a shortcut.",
    ),
    (
        "evidence_",
        "Evidence: mIoU of each step. The dashed line is the analytic prior, a predictor "
        "that never sees the image; a model that reads the image stands well above it.",
    ),
    (
        "samples_",
        "The baseline model on four val images: the image, the true mask, the prediction on "
        "the image and the prediction on pure noise. Reading the image means the third "
        "column matches the second and the fourth does not.",
    ),
    ("learning_curves", "mIoU over training steps for every model the diagnose trained."),
    (
        "prior_all",
        "Where each class usually sits: the share of training labels of that class at each "
        "pixel. The analytic prior predicts the most frequent class at every pixel.",
    ),
    ("classes_", "Per class: IoU of the prior, of the model on real images and on noise."),
    ("suspects_", "Training pairs whose mask fits its own image worst, with the image it fits best."),
]


def png_data_uri(path: Path) -> str:
    """A PNG file as a `data:image/png;base64,...` URI (the page carries its pictures)."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ConfigError(f"{path}: not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def select_runs(cfg: DictConfig, where: list[str], diagnose_id: str | None) -> tuple[pd.DataFrame, list[dict]]:
    """The run table rows and the records the page covers: `--where`'s runs, or with
    `diagnose_id` that diagnose, its steps and the validate runs of its models.

    Raises:
        ConfigError: an unknown diagnose id or `--where` column, or no runs at all.
    """
    root = runs.runs_root(cfg)
    read = list(runs.iter_records(root))  # once: a bad record warns once
    table = filter_table(runs.table_of(read), where)
    records = {r["run_id"]: r for r in read if r["run_id"] in set(table.run_id)}
    if diagnose_id is not None:
        gate = runs.read_gate_record(root, diagnose_id)
        members = {gate["run_id"], *gate["steps"].values()}
        members |= {run_id for run_id, r in records.items() if (r.get("validate") or {}).get("source_run") in members}
        table = table[table.run_id.isin(members)]
        records = {run_id: r for run_id, r in records.items() if run_id in members}
    if table.empty:
        raise ConfigError(f"report html: no runs to report under {root}")
    return table, [records[run_id] for run_id in table.run_id if run_id in records]


def verdict_summary(record: dict) -> dict:
    """The verdict in plain words: a headline, what it means, and what to do next."""
    ev, gate, name = record["evidence"], record["gate"], record["verdict"]
    real, prior = ev["real"], ev["prior"]
    meaning = [
        f"Trained on real images, the model scores {real:.1f} mIoU. A predictor that never "
        f"looks at the image and only knows where each class usually sits in the frame (the "
        f"analytic prior) scores {prior:.1f}."
    ]
    info = ev.get("information")
    if info:
        meaning.append(
            f"In information: of the {info['entropy']['value']:.2f} bits per pixel the labels hold, "
            f"where classes usually sit explains {info['location']['value']:.2f} and the image "
            f"{info['content']['value']:+.2f} more (95% interval {info['content']['low']:+.2f} to "
            f"{info['content']['high']:+.2f}); {info['remaining']['value']:.2f} remain."
        )
    if name == HEALTHY:
        meaning.append(f"The {real - prior:+.1f} points between them come from what the image shows.")
        if ev.get("shuffled") is not None:
            meaning.append(
                f"A model trained on images paired with the wrong masks reaches only "
                f"{ev['shuffled']:.1f}, so images and masks line up."
            )
        next_steps = [
            _step("Keep this pipeline: its mIoU measures what the model sees."),
            _step(
                "Before trusting a model's number, pass the validation gates (noise, robustness, generalization):",
                f"segaudit validate {record['run_id']}",
            ),
        ]
    elif name == PIPELINE_FAULT:
        meaning.append(
            "The model does not receive images that match their labels, so no loss "
            "function can help: the fix is in the data pipeline. Why:"
        )
        next_steps = [_step(check) for check in gate.get("next_checks") or []]
        if ev.get("suspect_flagged"):
            next_steps.insert(
                0, _step("List the misaligned pairs:", f"segaudit suspects --diagnose {record['run_id']}")
            )
    elif name == INCONCLUSIVE:
        meaning.append(
            "The model has not trained long enough to say whether it reads the image, "
            "has a broken pipeline, or relies on where classes sit. A model still learning is "
            "undertrained, not a shortcut. Why:"
        )
        next_steps = [_step(step) for step in gate.get("next_steps") or []]
    else:
        meaning.append(
            "Learning has stopped and most of what the model explains comes from where "
            "classes usually sit, not from the image. Why:"
        )
        next_steps = [
            _step(f"The decision gate says {gate['decision']}: {gate['why']}."),
            _step("Retrain as the gate says:", f"segaudit retrain retrain.from_gate={record['run_id']}"),
        ]
    return {
        "headline": _HEADLINE.get(name, name),
        "meaning": meaning,
        "reasons": list(record["reasons"]),
        "next_steps": next_steps,
        "style": _STYLE.get(name, "warn"),
    }


def _step(text: str, command: str | None = None) -> dict:
    return {"text": text, "command": command}


def evidence_rows(record: dict) -> list[dict]:
    """The evidence table's rows (`report.evidence_frame`), with each bar's length and the
    prior's mark in percent."""
    prior = record["evidence"]["prior"]
    rows = []
    for step in evidence_frame(record).itertuples(index=False):
        value = None if pd.isna(step.miou) else float(step.miou)
        rows.append(
            {
                "label": step.step,
                "miou": value,
                "run": None if pd.isna(step.run_id) else step.run_id,
                "prior": prior,
                "bar": None if value is None else max(0.0, min(value, 100.0)),
                "is_prior": step.step.startswith("analytic prior"),
            }
        )
    return rows


def diagnose_section(cfg: DictConfig, record: dict, workdir: Path) -> dict:
    """Everything the page shows about one diagnose (its pictures drawn into `workdir`)."""
    out_dir = workdir / record["run_id"]
    drawn = diagnose_figures(cfg, record, out_dir)
    if record["steps"].get("prior"):
        drawn += prior_overview_figure(cfg, record["steps"]["prior"], out_dir)
    pictures = [
        {"title": path.stem.replace("_", " "), "caption": caption, "src": png_data_uri(path)}
        for prefix, caption in _PICTURES
        for path in drawn
        if path.name.startswith(prefix)
    ]
    classes = (record.get("classes") or {}).get("rows") or []
    return {
        "record": record,
        "summary": verdict_summary(record),
        "evidence": evidence_rows(record),
        "information": information_rows(record["evidence"]),
        "curve": curve_rows(record["evidence"]),
        "stages": ((record["evidence"].get("budget") or {}).get("stages") or []),
        "budget": record["evidence"].get("budget"),
        "gain": record["evidence"]["real"] - record["evidence"]["prior"],
        "pictures": pictures,
        "classes": classes,
        "class_line": (record.get("classes") or {}).get("line"),
        "split_lines": _split_lines(record.get("split")),
    }


def _interval(value: dict | None, digits: int) -> str:
    if not value:
        return "-"
    return f"{value['value']:+.{digits}f} [{value['low']:+.{digits}f}, {value['high']:+.{digits}f}]"


def information_rows(ev: dict) -> list[dict]:
    """What location and content explain of each model's val labels, in bits per pixel."""
    rows = []
    for key, who in (
        ("information", "trained on real pairs"),
        ("shuffled_information", "shuffled-pair control"),
        ("noise_information", "real-trained, fed noise"),
    ):
        info = ev.get(key)
        if info:
            rows.append(
                {
                    "who": who,
                    "entropy": info["entropy"]["value"],
                    "location": info["location"]["value"],
                    "content": _interval(info["content"], 3),
                    "remaining": info["remaining"]["value"],
                    "share": info["content_share"],
                }
            )
    return rows


def curve_rows(ev: dict) -> list[dict]:
    """The learning curve as table rows, each number with its 95% interval."""
    stages = {s["step"]: s["verdict"] for s in (ev.get("budget") or {}).get("stages", [])}
    return [
        {
            "step": p["step"],
            "miou": p["miou"],
            "content": _interval(p["content"], 3),
            "versus": _interval(p.get("versus_shuffled"), 3),
            "verdict": stages.get(p["step"], ""),
        }
        for p in ev.get("curve") or []
    ]


def _split_lines(split: dict | None) -> list[str]:
    return consistency_lines(split) if split and not split.get("consistent", True) else []


def validate_section(record: dict) -> dict:
    block = record["validate"]
    return {
        "run_id": record["run_id"],
        "source": block.get("source"),
        "passed": block.get("passed"),
        "gates": [
            {**gate, "result": gate.get("result") or {True: "PASS", False: "FAIL"}.get(gate.get("passed"), "SKIP")}
            for gate in block.get("gates", [])
        ],
    }


def audit_rows(records: list[dict]) -> tuple[list[str], list[dict]]:
    """One row per audit (models trained anywhere): mIoU per input against the prior,
    content gain and red flags; the input columns are those any audit measured."""
    audits = [r for r in records if r.get("phase") == "audit" and r.get("audit")]
    inputs = list(dict.fromkeys(name for r in audits for name in r["audit"]["miou"]))
    rows = [
        {
            "run_id": r["run_id"],
            "model": f"{r.get('model')}/{r.get('encoder')}",
            "source": r["audit"]["source"],
            "miou": [r["audit"]["miou"].get(name) for name in inputs],
            "prior": r["audit"]["prior_miou"],
            "gain": r["audit"]["content_gain"],
            "red_flags": list(r["audit"].get("red_flags") or []),
        }
        for r in audits
    ]
    return inputs, rows


def provenance(root: Path, records: list[dict]) -> list[dict]:
    """Per run: the command, package versions and resolved config that produced it."""
    out = []
    for record in records:
        saved = root / record["run_id"] / runs.CONFIG
        out.append(
            {
                "run_id": record["run_id"],
                "command": record.get("command") or "",
                "versions": record.get("versions") or {},
                "started_at": record.get("started_at"),
                "device": record.get("device"),
                "config": saved.read_text(encoding="utf-8", errors="replace") if saved.is_file() else None,
            }
        )
    return out


def _scope(cfg: DictConfig, table: pd.DataFrame) -> dict | None:
    try:
        return run_scope(cfg, table=table)
    except ConfigError:  # no completed training run among these: nothing to analyse
        return None


def _run_rows(table: pd.DataFrame) -> tuple[list[str], list[list]]:
    columns = [c for c in MARKDOWN_COLUMNS if c in table.columns]
    rows = [[None if pd.isna(v) else v for v in row] for row in table[columns].itertuples(index=False)]
    return columns, rows


def build_context(cfg: DictConfig, where: list[str], diagnose_id: str | None, command: str, workdir: Path) -> dict:
    """What the template renders (every value already measured; nothing computed there)."""
    root = runs.runs_root(cfg)
    table, records = select_runs(cfg, where, diagnose_id)
    gates = sorted(
        (r for r in records if r.get("phase") == "gate" and r.get("evidence")),
        key=lambda r: r.get("started_at") or "",
        reverse=True,
    )
    columns, rows = _run_rows(table)
    audit_inputs, audits = audit_rows(records)
    return {
        "title": f"segaudit report: {diagnose_id or root.name or root}",
        "generated": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "version": __version__,
        "runs_root": str(root),
        "command": command,
        "where": where,
        "diagnoses": [diagnose_section(cfg, r, workdir) for r in gates],
        "validations": [validate_section(r) for r in records if r.get("phase") == "validate" and r.get("validate")],
        "audit_inputs": audit_inputs,
        "audits": audits,
        "scope": _scope(cfg, table),
        "columns": columns,
        "rows": rows,
        "provenance": provenance(root, records),
    }


def _number(value, digits: int = 2) -> str:
    """A table cell: floats to `digits` places, "-" for missing (None, NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render(context: dict) -> str:
    """The page's HTML (Jinja2, autoescaped)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("segaudit.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _number
    return env.get_template(TEMPLATE).render(**context)


def write_html_report(
    cfg: DictConfig, path: Path, where: list[str] = (), diagnose_id: str | None = None, command: str = ""
) -> dict:
    """`segaudit report html PATH`: select, draw, render, then write the file atomically.

    Returns:
        `{"path", "runs", "verdicts"}`: what was written, for the command's one line.
    """
    path = Path(path).expanduser()
    if path.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--html {path}: expected a .html file name")
    with tempfile.TemporaryDirectory(prefix="segaudit-html-") as workdir:
        context = build_context(cfg, list(where), diagnose_id, command, Path(workdir))
        page = render(context)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs.atomic_write(path, lambda fh: fh.write(page))
    return {
        "path": path,
        "runs": len(context["rows"]),
        "verdicts": {d["record"]["run_id"]: d["record"]["verdict"] for d in context["diagnoses"]},
    }


# Headless Chromium on a machine with no network: no sandbox (root in containers), and no
# background connections to Google's hosts, which a closed network refuses one by one.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]


def find_chromium() -> str | None:
    """The Chromium (or Chrome) binary on PATH, if any (Debian: `apt-get install chromium`)."""
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def screenshot(page: Path, png: Path, width: int = 1200, height: int = 3000, browser: str | None = None) -> Path:
    """The page as headless Chromium draws it, saved as `png` (to check a report or to
    show one in a README).

    Raises:
        ConfigError: no Chromium on PATH, or it wrote no picture (its last message is named).
    """
    browser = browser or find_chromium()
    if browser is None:
        raise ConfigError("no chromium on PATH (Debian: apt-get install chromium)")
    png = Path(png).resolve()
    with tempfile.TemporaryDirectory(prefix="segaudit-chromium-") as profile:
        done = subprocess.run(
            [
                browser,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={int(width)},{int(height)}",
                f"--screenshot={png}",
                Path(page).resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    if not png.is_file():
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise ConfigError(f"{browser}: no screenshot of {page} ({lines[-1] if lines else f'exit {done.returncode}'})")
    return png


__all__ = [
    "build_context",
    "find_chromium",
    "png_data_uri",
    "render",
    "screenshot",
    "verdict_summary",
    "write_html_report",
]
