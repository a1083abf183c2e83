"""Scramble a folder dataset's image<->mask pairing on disk: a real pipeline bug, not a flag.

    python scripts/scramble_pairs.py DIR [--split train] [--share 0.3] [--seed 0]

`--share` of the split's masks (all of them by default) are renamed onto one another's
stems (one random cycle, so no chosen mask keeps its image) and their stems are printed.
File names, sizes and label values stay valid: `data check`-style checks pass, and only
a test that asks whether the image predicts the label can notice.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from segaudit.data.conditions import derangement


def scramble(root: Path, split: str, seed: int, share: float = 1.0) -> list[str]:
    """Rename the chosen masks onto each other's stems; return the chosen stems."""
    folder = root / "masks" / split
    masks = sorted(folder.glob("*.png"))
    chosen = sorted(np.random.default_rng(seed).permutation(len(masks))[: max(2, round(share * len(masks)))])
    masks = [masks[i] for i in chosen]
    perm = derangement(len(masks), seed)
    staged = []
    for path in masks:  # two passes so no rename overwrites a pending file
        tmp = path.with_suffix(".scrambling")
        os.rename(path, tmp)
        staged.append(tmp)
    for i, tmp in enumerate(staged):
        os.rename(tmp, masks[perm[i]])
    return [m.stem for m in masks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--share", type=float, default=1.0, help="fraction of the masks to scramble")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    stems = scramble(args.root, args.split, args.seed, args.share)
    print(
        f"scrambled the pairing of {len(stems)} {args.split} masks under {args.root}: "
        f"{', '.join(stems[:8])}{' ...' if len(stems) > 8 else ''}"
    )


if __name__ == "__main__":
    main()
