"""Benchmark: the analytic prior's label pass vs decoding the same label PNGs.

Writes N street-like label maps (19 classes, default 500 of 512x1024) to a temp folder,
then times (a) decoding them all with the same thread pool and (b) `count_labels`, which
decodes and accumulates the per-pixel class counts. The prior should cost about as much
as the decode it cannot avoid: the printed ratio is prior / decode.

    python scripts/bench_prior.py [--n 500] [--height 512] [--width 1024] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from segaudit.data.folder import read_mask
from segaudit.measure.prior import count_labels


def write_labels(folder: Path, n: int, height: int, width: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        mask = np.zeros((height, width), np.uint8)
        horizon = int(rng.uniform(0.3, 0.6) * height)
        mask[:horizon] = 10  # sky
        mask[horizon:] = 0  # road
        for _ in range(30):  # objects of other classes
            y, x = rng.integers(0, height - 40), rng.integers(0, width - 60)
            mask[y : y + rng.integers(10, 40), x : x + rng.integers(10, 60)] = rng.integers(1, 19)
        mask[-20:] = 255
        path = folder / f"{i:04d}.png"
        Image.fromarray(mask).save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_labels(Path(tmp), args.n, args.height, args.width)
        for _ in range(2):  # the first pass also warms the page cache
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.workers) as pool:
                for _ in pool.map(read_mask, paths):
                    pass
            decode = time.perf_counter() - t0
            t0 = time.perf_counter()
            counts = count_labels(paths, (args.height, args.width), 19, 255, args.workers)
            prior = time.perf_counter() - t0
        labelled = (args.height - 20) * args.width * args.n  # every pixel but the ignore band
        assert int(counts.sum()) == labelled, "prior lost or double-counted pixels"
    print(
        f"{args.n} label maps {args.height}x{args.width}, {args.workers} threads: "
        f"decode {args.n / decode:.0f} labels/s, prior {args.n / prior:.0f} labels/s, "
        f"ratio prior/decode = {prior / decode:.2f}"
    )


if __name__ == "__main__":
    main()
