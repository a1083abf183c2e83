"""Scramble a folder dataset's image<->mask pairing on disk: a real pipeline bug, not a flag.

    python scripts/scramble_pairs.py DIR [--split train] [--seed 0]

Every mask of the split is renamed onto another image's stem (one random cycle, so no
mask keeps its image). File names, sizes and label values stay valid: `data check`-style
checks pass, and only a test that asks whether the image predicts the label can notice.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from segaudit.data.conditions import derangement


def scramble(root: Path, split: str, seed: int) -> int:
    folder = root / "masks" / split
    masks = sorted(folder.glob("*.png"))
    perm = derangement(len(masks), seed)
    staged = []
    for i, path in enumerate(masks):  # two passes so no rename overwrites a pending file
        tmp = path.with_suffix(".scrambling")
        os.rename(path, tmp)
        staged.append(tmp)
    for i, tmp in enumerate(staged):
        os.rename(tmp, masks[perm[i]])
    return len(masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    count = scramble(args.root, args.split, args.seed)
    print(f"scrambled the pairing of {count} {args.split} masks under {args.root}")


if __name__ == "__main__":
    main()
