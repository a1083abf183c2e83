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
