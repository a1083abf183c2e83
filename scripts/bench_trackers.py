"""Benchmark: what `logger=tensorboard|mlflow` costs a training run, against `logger=none`.

Each logger trains the same model on the same data at two run lengths; the difference
between the lengths is the per-iteration cost (logging every `train.log_every` steps),
the rest is the one-off cost (opening the tracker, the params, the final record, the
sample grid and the artifacts). Runs alternate between loggers to share the machine's
drift; the report gives, per logger, the median per-iteration ratio against `none` with
its spread over the repeats, and the median one-off seconds over `none`. MLflow writes to
a SQLite store in a temp folder.

    python scripts/bench_trackers.py                       # CPU: 64 px, 10 and 40 iters, 3 repeats
    python scripts/bench_trackers.py --log-every 1 --device cuda --iters 50 200
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from segaudit.core.config import compose
from segaudit.core.devices import resolve_device
from segaudit.data import prepare_dataset
from segaudit.train.engine import train

LOGGERS = ("none", "tensorboard", "mlflow")


def timed_run(overrides: list[str], logger: str, iters: int, root: Path, tag: str) -> float:
    """Seconds for one `engine.train` with this logger and length."""
    extra = [f"logger={logger}", f"train.iters={iters}", f"paths.runs={root / tag}"]
    if logger == "mlflow":
        extra.append(f"logger.tracking_uri=sqlite:///{root / 'mlflow.db'}")
    t0 = time.perf_counter()
    train(compose(overrides + extra))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, nargs=2, default=[10, 40], help="the two run lengths")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--size", type=int, default=64, help="synthetic scene size (px)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    short, long = args.iters

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        overrides = [
            f"device={args.device}",
            f"train.log_every={args.log_every}",
            "train.progress=false",
            f"dataset.generate.size={args.size}",
            f"dataset.transform.crop=[{args.size},{args.size}]",
            "dataset.generate.n_val=8",
            f"paths.cache={root / 'cache'}",
        ]
        prepare_dataset(compose(overrides).dataset, str(root / "cache"))  # generate once, untimed
        timed_run(overrides, "mlflow", 1, root, "warmup")  # the store's schema, and the imports
        per_iter = {name: [] for name in LOGGERS}
        one_off = {name: [] for name in LOGGERS}
        for repeat in range(args.repeats):
            for name in LOGGERS:
                t_short = timed_run(overrides, name, short, root, f"{name}-{repeat}-short")
                t_long = timed_run(overrides, name, long, root, f"{name}-{repeat}-long")
                per_iter[name].append((t_long - t_short) / (long - short))
                one_off[name].append(t_short - short * per_iter[name][-1])
            print(
                f"repeat {repeat}: "
                + ", ".join(f"{n} {per_iter[n][-1] * 1e3:.1f} ms/iter + {one_off[n][-1]:.2f} s" for n in LOGGERS)
            )
    print(
        f"{args.size}px on {resolve_device(args.device)}, log every {args.log_every} steps, "
        f"{args.repeats} repeats of {short} and {long} iterations:"
    )
    for name in LOGGERS[1:]:
        ratios = [a / b for a, b in zip(per_iter[name], per_iter["none"])]
        extra = [a - b for a, b in zip(one_off[name], one_off["none"])]
        print(
            f"  {name}: per-iteration ratio vs none {statistics.median(ratios):.3f} "
            f"(range {min(ratios):.3f}-{max(ratios):.3f}); one-off {statistics.median(extra):+.2f} s "
            f"(range {min(extra):+.2f} to {max(extra):+.2f})"
        )


if __name__ == "__main__":
    main()
