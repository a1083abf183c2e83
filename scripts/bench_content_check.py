"""Benchmark the training-time content check against the validation pass it rides on.

Per check, `ContentMonitor.measure` scores every image of the fixed subset four ways (real,
noise, blank, shuffled). On its own it predicts the subset twice (real and noise) and one
blank image; when it watches the trainer's validation (`ContentMonitor.watch`, what the
Lightning and HF callbacks do), the real predictions are the validation's own and the
check predicts noise and blank only. The reference is one plain validation pass over the
same subset (forward, loss, argmax, confusion matrix), what a Lightning or HF evaluation
does. Each repeat times, in one run: a plain validation; a check on its own; a validation
watched by the monitor, then the check. Reported, as medians with their range:

- `own`: check / plain validation;
- `shared`: (watched validation - plain validation + check) / plain validation, what a
  check adds to the trainer's own validation pass.

The one-off cost (collecting the subset, counting the prior from the training masks) is
timed apart.

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
from functools import partial

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


def time_check(monitor, model, images, masks, device, batch_size: int, repeats: int) -> dict[str, list[float]]:
    """Per repeat, in one run: a plain validation, a check predicting its own real pass,
    and a watched validation followed by the check that reuses its real predictions."""
    times = {"plain": [], "own": [], "shared": []}

    def timed(work) -> float:
        _sync(device)
        t0 = time.perf_counter()
        work()
        _sync(device)
        return time.perf_counter() - t0

    validation = partial(plain_validation, model, images, masks, device, batch_size)
    for repeat in range(repeats):
        plain = timed(validation)
        own = timed(partial(monitor.measure, model, 2 * repeat + 1))
        monitor.watch(model)
        watched = timed(validation)
        check = timed(partial(monitor.measure, model, 2 * repeat + 2))
        if monitor.last.real_pass != "trainer":
            raise RuntimeError("the watched validation did not give the check its real pass")
        times["plain"].append(plain)
        times["own"].append(own / plain)
        times["shared"].append((watched - plain + check) / plain)
    return times


def summary(times: dict[str, list[float]]) -> str:
    def spread(values):
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    return (
        f"plain validation {statistics.median(times['plain']):.3f} s; check / plain: own real pass "
        f"{spread(times['own'])}, sharing the validation's {spread(times['shared'])}; {len(times['plain'])} repeats"
    )


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
    times = time_check(monitor, model, monitor.images, monitor.masks, device, args.batch_size, args.repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"{height}x{width}, subset {args.subset}, {device}: subset on the host "
        f"{monitor.images.nbytes / 2**30:.2f} GiB (peak RSS {before:.1f} -> {peak:.1f} GiB); setup {setup:.1f} s; "
        f"{summary(times)}; content {monitor.last.scalars()['segaudit/content_bits']:+.3f} bits/pixel"
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
        times = time_check(monitor, model, images, masks, device, args.batch_size, args.repeats)
    print(
        f"{args.size}px, subset {args.subset}, {device}: one-off setup {setup:.2f} s (subset + prior of "
        f"{len(train)} training masks); {summary(times)}"
    )


if __name__ == "__main__":
    main()
