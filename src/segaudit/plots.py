"""Pictures written with matplotlib (Agg backend: no display needed)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first)
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
    return written


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
    priors = {r["dataset"]: r["metrics"]["miou"] for r in records
              if r.get("phase") == "prior" and r.get("metrics")}
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
