"""Pictures written with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first)
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def prior_heatmaps(frequencies: torch.Tensor, class_names: list[str], out_dir: Path) -> list[Path]:
    """One PNG per class: where the training labels put it (per-pixel frequency, 0..1).

    Returns:
        The written paths, `out_dir/prior_<index>_<name>.png`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, name in enumerate(class_names):
        fig, ax = plt.subplots(figsize=(4, 3.2), dpi=100)
        shown = ax.imshow(frequencies[index].numpy(), vmin=0.0, vmax=1.0, cmap="magma")
        ax.set_title(f"{name}: P(class | pixel)", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        path = out_dir / f"prior_{index:02d}_{_slug(name)}.png"
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    written.append(prior_overview(frequencies, class_names, out_dir / "prior_all.png"))
    return written


def prior_overview(frequencies: torch.Tensor, class_names: list[str], path: Path) -> Path:
    """All classes' heatmaps in one picture (up to 40), on one colour scale."""
    shown = min(len(class_names), 40)
    cols = min(shown, 4)
    rows = -(-shown // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows + 0.4), dpi=100, squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= shown:
            ax.axis("off")
            continue
        image = ax.imshow(frequencies[index].numpy(), vmin=0.0, vmax=1.0, cmap="magma")
        ax.set_title(class_names[index], fontsize=9)
    fig.suptitle("analytic prior: P(class | pixel) from the training labels", fontsize=10)
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def learning_curves(records: list[dict], out_dir: Path) -> list[Path]:
    """Training loss and evaluation mIoU against the step, one line per run."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trained = [r for r in records if r.get("train_log")]
    if not trained:
        return []
    fig, (loss_ax, miou_ax) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    for record in trained:
        label = f"{record['run_id']} ({record.get('strategy')})"
        log = record["train_log"]
        loss_ax.plot([e["step"] for e in log], [e["loss"] for e in log], label=label)
        evals = [h for h in record.get("history") or [] if h.get("condition") == record.get("eval_condition")]
        if evals:
            miou_ax.plot([h["step"] for h in evals], [h["miou"] for h in evals], marker="o", label=label)
    loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
    miou_ax.set(title="validation mIoU", xlabel="step", ylabel="mIoU (%)")
    handles, labels = loss_ax.get_legend_handles_labels()
    fig.legend(handles[:8], labels[:8], loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.12 if len(trained) < 3 else 0.2, 1, 1))
    path = out_dir / "learning_curves.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]


def miou_by_condition(records: list[dict], out_dir: Path) -> list[Path]:
    """For each model evaluated under several input conditions: mIoU per condition, with
    the analytic prior of its dataset as a dashed line (what ignoring the image scores)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    priors = {r["dataset"]: r["metrics"]["miou"] for r in records if r.get("phase") == "prior" and r.get("metrics")}
    written = []
    for record in records:
        by_condition = record.get("metrics_by_condition") or {}
        if len(by_condition) < 2:
            continue
        names = list(by_condition)
        values = [by_condition[n]["miou"] or 0.0 for n in names]
        prior = (record.get("audit") or {}).get("prior_miou", priors.get(record.get("dataset")))
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.bar(names, values, color=["#4c72b0" if n == "real" else "#c44e52" for n in names])
        if prior is not None:
            ax.axhline(prior, color="black", linestyle="--", label=f"analytic prior {prior:.1f}")
            ax.legend(fontsize=8)
        ax.set(title=f"{record['run_id']}: mIoU by input", ylabel="mIoU (%)", ylim=(0, 100))
        path = out_dir / f"miou_by_condition_{record['run_id']}.png"
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def evidence_bars(record: dict, out_dir: Path) -> list[Path]:
    """A diagnose's evidence as bars (what was trained / evaluated on what), with the
    analytic prior as a dashed line: a model that reads the image stands well above it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ev = record["evidence"]
    bars = [
        ("real on real", ev["real"]),
        ("real on noise", ev.get("real_on_noise")),
        ("shuffled pairs", ev.get("shuffled")),
        ("noise on noise", ev.get("noise_trained")),
        ("tier 1", ev.get("tier1")),
    ]
    bars = [(label, value) for label, value in bars if value is not None]
    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=100)
    ax.bar(
        [b[0] for b in bars],
        [b[1] for b in bars],
        color=["#4c72b0" if "real on real" in b[0] or b[0] == "tier 1" else "#c44e52" for b in bars],
    )
    ax.axhline(ev["prior"], color="black", linestyle="--", label=f"analytic prior {ev['prior']:.1f}")
    for index, (_, value) in enumerate(bars):
        ax.text(index, value + 1, f"{value:.1f}", ha="center", fontsize=8)
    ax.legend(fontsize=8)
    ax.set(title=f"diagnose {record['run_id']}: {record['verdict']}", ylabel="mIoU (%)", ylim=(0, 100))
    ax.tick_params(axis="x", labelsize=8)
    path = out_dir / f"evidence_{record['run_id']}.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return [path]


def _band(ax, steps, points, color, label):
    """A line with its interval as a shaded band (points: {value, low, high} dicts)."""
    shown = [(s, p) for s, p in zip(steps, points) if p]
    if not shown:
        return
    xs = [s for s, _ in shown]
    ax.plot(xs, [p["value"] for _, p in shown], marker="o", color=color, label=label)
    ax.fill_between(xs, [p["low"] for _, p in shown], [p["high"] for _, p in shown], color=color, alpha=0.2)


def evidence_curve(record: dict, out_dir: Path) -> list[Path]:
    """A diagnose's learning curve with 95% intervals: mIoU of the baseline and of the
    shuffled-pair control against the prior (left), and in bits per pixel the baseline's
    content information and its advantage over the control (right), each stage's verdict
    written under its step. Nothing when the diagnose has no curve (older records)."""
    ev = record["evidence"]
    curve = ev.get("curve") or []
    if not curve:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = [p["step"] for p in curve]
    fig, (miou_ax, bits_ax) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    _band(miou_ax, steps, [p["miou"] for p in curve], "#4c72b0", "baseline (real pairs)")
    _band(miou_ax, steps, [p.get("shuffled_miou") for p in curve], "#c44e52", "shuffled-pair control")
    miou_ax.axhline(ev["prior"], color="black", linestyle="--", label=f"analytic prior {ev['prior']:.1f}")
    miou_ax.set(title="validation mIoU", xlabel="training step", ylabel="mIoU (%)")
    _band(bits_ax, steps, [p["content"] for p in curve], "#4c72b0", "content information (vs prior)")
    _band(bits_ax, steps, [p.get("versus_shuffled") for p in curve], "#55a868", "advantage over the control")
    bits_ax.axhline(0.0, color="black", linestyle="--", linewidth=1)
    bits_ax.set(xlabel="training step", ylabel="bits per pixel")
    bits_ax.set_title("information from the image", pad=14)
    for ax in (miou_ax, bits_ax):
        if len(steps) > 1 and steps[-1] / max(steps[0], 1) >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(s) for s in steps], fontsize=7)
        ax.minorticks_off()
        ax.legend(fontsize=7)
    stages = {s["step"]: s["verdict"] for s in (ev.get("budget") or {}).get("stages", [])}
    colours = {
        "HEALTHY": "#1a7f37",
        "PIPELINE_FAULT": "#cf222e",
        "SPATIAL_SHORTCUT": "#9a6700",
        "INCONCLUSIVE": "#0550ae",
    }
    for step in steps:
        if step in stages:  # each stage's verdict along the top
            bits_ax.annotate(
                stages[step].replace("_", " ").lower(),
                (step, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
                color=colours.get(stages[step], "black"),
                annotation_clip=False,
            )
    fig.suptitle(f"diagnose {record['run_id']}: {record['verdict']} (95% intervals over val images)", fontsize=10)
    fig.tight_layout()
    path = out_dir / f"curve_{record['run_id']}.png"
    fig.savefig(path)
    plt.close(fig)
    return [path]


def class_bars(frame, path: Path, run_id: str) -> Path:
    """Per-class IoU of the prior, the model on real images and on noise input, side by
    side: a class whose real bar does not rise above its prior bar is read from location."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.arange(len(frame))
    series = [
        ("prior_iou", "analytic prior", "#999999"),
        ("real_iou", "real images", "#4c72b0"),
        ("noise_iou", "noise input", "#c44e52"),
    ]
    shown = [s for s in series if frame[s[0]].notna().any()]
    width = 0.8 / len(shown)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.6 * len(frame) + 2), 3.6), dpi=100)
    for i, (column, label, color) in enumerate(shown):
        ax.bar(x + (i - (len(shown) - 1) / 2) * width, frame[column].fillna(0), width, label=label, color=color)
    for index, flagged in enumerate(frame["location_only"]):
        if flagged:
            ax.text(index, 102, "location\nonly", ha="center", fontsize=7, color="#b8860b")
    ax.set_xticks(x, frame["class"], rotation=45 if len(frame) > 10 else 0, ha="right" if len(frame) > 10 else "center")
    ax.set(title=f"per-class IoU, {run_id}", ylabel="IoU (%)", ylim=(0, 115))
    ax.legend(fontsize=8, ncol=3, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
