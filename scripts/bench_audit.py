"""Benchmark `segaudit audit` against a bare loop doing four plain evaluation passes.

The audit measures real, noise, blank and shuffled inputs in one pass over the val set
(one batch of real images and one of deranged images per step). The bare loop is what a
user would write by hand: four separate passes over the same images with the same
model, each padding to the stride, predicting, and counting a confusion matrix.

One-off costs (building the model, the analytic prior over the training labels, the run
record) are separated from per-image costs by timing two val-set sizes: the per-image
cost is the difference divided by the extra images. Repeats alternate ours/bare; the
report is the median per-image ratio ours/bare with its range.

    python scripts/bench_audit.py                       # CPU, synthetic 64 px, 3 repeats
    python scripts/bench_audit.py --device cuda --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from segaudit.core.config import compose, load_group_option
from segaudit.data import build_dataset, eval_loader, prepare_dataset
from segaudit.measure.metrics import ConfusionMatrix
from segaudit.models.checkpoints import load_for_eval
from segaudit.models.inference import model_stride
from segaudit.train.engine import train
from segaudit.workflows.audit import audit


def bare_audit(cfg, run_id: str, device: torch.device) -> None:
    """Four plain passes: real, noise, blank, shuffled (deranged pairs), by hand."""
    trained = load_for_eval(cfg, run_id, device)
    model, dcfg = trained.model, trained.saved.dataset
    multiple, k = model_stride(model), int(dcfg.num_classes)
    mean = torch.tensor(list(dcfg.transform.mean), device=device).view(1, 3, 1, 1)
    std = torch.tensor(list(dcfg.transform.std), device=device).view(1, 3, 1, 1)
    generator = torch.Generator(device=device).manual_seed(0)
    inputs = {
        "real": lambda x: x,
        "noise": lambda x: (torch.rand(x.shape, generator=generator, device=device) - mean) / std,
        "blank": lambda x: torch.zeros_like(x),
    }
    real = build_dataset(dcfg, "val", train=False)
    shuffled = build_dataset(dcfg, "val", train=False, condition=load_group_option("condition", "shuffled"))
    batch = int(cfg.train.eval_batch_size)
    with torch.inference_mode():
        for name, dataset in (("real", real), ("noise", real), ("blank", real), ("shuffled", shuffled)):
            metric = ConfusionMatrix(k, int(dcfg.ignore_index))
            for images, target in eval_loader(dataset, batch):
                x = inputs.get(name, inputs["real"])(images.to(device))
                h, w = x.shape[-2:]
                logits = model(F.pad(x, (0, -w % multiple, 0, -h % multiple)))[..., :h, :w]
                metric.update(logits.argmax(1), target.to(device))
            metric.compute()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", type=int, default=50, help="val images of the short run")
    parser.add_argument("--large", type=int, default=150, help="val images of the long run")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    common = [
        f"paths.runs={work / 'runs'}",
        f"paths.cache={work / 'cache'}",
        f"device={args.device}",
        "train.progress=false",
        "train.eval_batch_size=16",
    ]
    configs = {}
    for n_val in (args.small, args.large):
        overrides = [*common, f"dataset.generate.n_val={n_val}", "dataset.generate.n_train=100"]
        cfg = compose([*overrides, f"run_id=model-{n_val}", "train.iters=1"])
        prepare_dataset(cfg.dataset, cfg.paths.cache)  # generation is not part of either side
        train(cfg)
        configs[n_val] = compose(overrides)
    device = torch.device(args.device)
    seconds = {(side, n): [] for side in ("ours", "bare") for n in configs}
    for _ in range(args.repeats):
        for n_val, cfg in configs.items():
            cfg.run_id = None
            seconds["ours", n_val].append(timed(lambda cfg=cfg, n_val=n_val: audit(cfg, f"model-{n_val}")))
            seconds["bare", n_val].append(timed(lambda cfg=cfg, n_val=n_val: bare_audit(cfg, f"model-{n_val}", device)))
    extra = args.large - args.small
    per_image = {
        side: [(seconds[side, args.large][r] - seconds[side, args.small][r]) / extra for r in range(args.repeats)]
        for side in ("ours", "bare")
    }
    ratios = [o / b for o, b in zip(per_image["ours"], per_image["bare"])]
    print(f"device {args.device}; val {args.small} vs {args.large} images of 64 px; {args.repeats} repeats")
    for side in ("ours", "bare"):
        one_off = [seconds[side, args.small][r] - args.small * per_image[side][r] for r in range(args.repeats)]
        print(
            f"  {side}: {1000 * statistics.median(per_image[side]):.1f} ms per image "
            f"(range {1000 * min(per_image[side]):.1f}-{1000 * max(per_image[side]):.1f}); one-off "
            f"{statistics.median(one_off):.2f} s"
        )
    print(
        f"  per-image ratio ours/bare: median {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
