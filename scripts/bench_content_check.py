"""Benchmark the training-time content check against the validation pass it rides on.

Per check, `ContentMonitor.measure` scores every image of the fixed subset four ways (real,
noise, blank, shuffled: two forward passes of the subset, one of a blank image); the
reference is one plain validation pass over the same subset (forward, loss, argmax,
confusion matrix), what a Lightning or HF evaluation does. The one-off cost (collecting
the subset, counting the prior from the training masks) is timed apart. Repeats alternate
check/plain; the report is the median ratio check/plain with its range.

    python scripts/bench_content_check.py                      # CPU, 64 px scenes, subset 32
    python scripts/bench_content_check.py --size 256 --device cuda --repeats 9
    python scripts/bench_content_check.py --frame 1024x2048 --subset 4 --batch-size 2 --repeats 2
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from segaudit.core.config import compose
from segaudit.data import build_dataset, prepare_dataset
from segaudit.data.synthetic import render_scene_at
from segaudit.integrations.content_check import IMAGENET_MEAN, IMAGENET_STD, ContentMonitor
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


def frame_benchmark(args, device) -> None:
    """The check at a real frame size (Cityscapes: 1024x2048), scenes rendered in memory:
    the per-check cost against a plain validation pass, and the host memory the subset
    takes."""
    height, width = (int(v) for v in args.frame.lower().split("x"))
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    images, masks = [], []
    for seed in range(args.subset):
        image, mask = render_scene_at(1000 + seed, height, width)
        images.append((torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std)
        masks.append(torch.from_numpy(mask.astype("int64")))
    train_masks = (torch.from_numpy(render_scene_at(s, height, width)[1].astype("int64")) for s in range(16))
    model = smp.Unet("resnet18", encoder_weights=None, classes=8).to(device).eval()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    monitor = ContentMonitor.from_batches(
        [(torch.stack(images), torch.stack(masks))], train_masks, 8, subset=args.subset, batch_size=args.batch_size
    )
    setup = time.perf_counter() - t0
    del images, masks
    checks, plains = [], []
    for repeat in range(args.repeats):
        _sync(device)
        t0 = time.perf_counter()
        monitor.measure(model, repeat)
        _sync(device)
        t1 = time.perf_counter()
        plain_validation(model, monitor.images, monitor.masks, device, args.batch_size)
        _sync(device)
        checks.append(t1 - t0)
        plains.append(time.perf_counter() - t1)
    ratios = [c / p for c, p in zip(checks, plains)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"{height}x{width}, subset {args.subset}, {device}: subset on the host "
        f"{monitor.images.nbytes / 2**30:.2f} GiB (peak RSS {before:.1f} -> {peak:.1f} GiB); setup {setup:.1f} s; "
        f"per check {statistics.median(checks):.1f} s vs plain validation {statistics.median(plains):.1f} s; "
        f"ratio median {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f}, "
        f"{args.repeats} repeats); content {monitor.last.scalars()['segaudit/content_bits']:+.3f} bits/pixel"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--subset", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frame", help="HxW, e.g. 1024x2048: scenes rendered at that size in memory")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.frame:
        frame_benchmark(args, device)
        return
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
