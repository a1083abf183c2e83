"""Benchmark the training-time content check against the validation pass it rides on.

Per check, `ContentMonitor.measure` feeds the fixed subset four ways (real, noise, blank,
shuffled) and scores every image; the reference is one plain validation pass over the
same subset (forward, loss, argmax, confusion matrix), what a Lightning or HF evaluation
does. The one-off cost (collecting the subset, counting the prior from the training
masks) is timed apart. Repeats alternate check/plain; the report is the median ratio
check/plain with its range.

    python scripts/bench_content_check.py                      # CPU, 64 px scenes, subset 32
    python scripts/bench_content_check.py --size 256 --device cuda --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from segaudit.core.config import compose
from segaudit.data import build_dataset, prepare_dataset
from segaudit.integrations.content_check import ContentMonitor
from segaudit.measure.metrics import ConfusionMatrix


def plain_validation(model, images, masks, device, batch_size: int) -> None:
    metric = ConfusionMatrix(int(model.segmentation_head[0].out_channels), 255)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x, y = images[start : start + batch_size].to(device), masks[start : start + batch_size].to(device)
            logits = model(x)
            F.cross_entropy(logits, y, ignore_index=255)
            metric.update(logits.argmax(1), y)
    metric.compute()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--subset", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as cache:
        settings = [f"paths.cache={cache}", f"dataset.generate.size={args.size}", "dataset.generate.n_train=64"]
        settings += [f"dataset.generate.n_val={args.subset}", "dataset.generate.n_test=2"]
        settings += [f"dataset.transform.crop=[{args.size},{args.size}]"]
        dcfg = prepare_dataset(compose(settings).dataset, cache)
        val, train = build_dataset(dcfg, "val", train=False), build_dataset(dcfg, "train", train=False)
        images = torch.stack([val[i][0] for i in range(len(val))])
        masks = torch.stack([val[i][1] for i in range(len(val))])
        model = smp.Unet("resnet18", encoder_weights=None, classes=8).to(device).eval()
        t0 = time.perf_counter()
        monitor = ContentMonitor.from_batches(
            [(images, masks)],
            (train[i][1] for i in range(len(train))),
            8,
            subset=args.subset,
            batch_size=args.batch_size,
            mean=dcfg.transform.mean,
            std=dcfg.transform.std,
        )
        setup = time.perf_counter() - t0
        monitor.measure(model)  # warm-up of both paths
        plain_validation(model, images, masks, device, args.batch_size)
        ratios, checks, plains = [], [], []
        for _ in range(args.repeats):
            _sync(device)
            t0 = time.perf_counter()
            monitor.measure(model)
            _sync(device)
            t1 = time.perf_counter()
            plain_validation(model, images, masks, device, args.batch_size)
            _sync(device)
            t2 = time.perf_counter()
            checks.append(t1 - t0)
            plains.append(t2 - t1)
            ratios.append((t1 - t0) / (t2 - t1))
    print(
        f"{args.size}px, subset {args.subset}, {device}: one-off setup {setup:.2f} s (subset + prior of "
        f"{len(train)} training masks); per check {statistics.median(checks):.3f} s vs plain validation "
        f"{statistics.median(plains):.3f} s; ratio check/plain median {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}, {args.repeats} repeats)"
    )


if __name__ == "__main__":
    main()
