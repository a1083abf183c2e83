"""Benchmark at Cityscapes size: the training data pipeline, and evaluation (whole and
slide) against a bare loop doing the same forward passes.

1. Data pipeline, one worker: decode a 1024x2048 PNG pair, random rescale (0.5-2.0),
   crop 512x1024, flip, normalise -- images/s, and how many DataLoader workers a GPU
   consuming `--gpu-rate` images/s needs.
2. Evaluation: `segaudit.train.engine.predict_labels` with `whole` and `slide` inference and
   the confusion-matrix update, against a bare loop (pad, forward, crop or the window
   loop, argmax) over the same model and images. Repeats alternate ours/bare; the
   report is the median ratio ours/bare with its range.

    python scripts/bench_real_sizes.py                      # CPU: 3 images, 3 repeats
    python scripts/bench_real_sizes.py --device cuda --images 20 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from segaudit.core.config import compose
from segaudit.core.devices import amp_dtype, resolve_device
from segaudit.data import build_dataset, prepare_dataset
from segaudit.data.synthetic import write_cityscapes_layout
from segaudit.measure.evaluation import predict_labels
from segaudit.measure.metrics import ConfusionMatrix
from segaudit.models.build import build_model
from segaudit.models.inference import build_inference, window_origins


def pipeline_rate(dcfg, samples: int) -> float:
    """Training samples/s of one worker: decode + rescale + crop + flip + normalise."""
    dataset = build_dataset(dcfg, "train", train=True)
    dataset[0]  # warm-up
    t0 = time.perf_counter()
    for i in range(samples):
        dataset[i % len(dataset)]
    return samples / (time.perf_counter() - t0)


def bare_predict(model, images, mode: str, crop, stride, multiple: int) -> torch.Tensor:
    """The same forward passes written out by hand."""
    height, width = images.shape[-2:]

    def whole(x):
        h, w = x.shape[-2:]
        logits = model(F.pad(x, (0, -w % multiple, 0, -h % multiple)))
        return logits[..., :h, :w]

    if mode == "whole":
        return whole(images).argmax(1)
    total = None
    count = torch.zeros(1, 1, height, width, device=images.device)
    for top, left in window_origins((height, width), crop, stride):
        bottom, right = min(top + crop[0], height), min(left + crop[1], width)
        logits = whole(images[..., top:bottom, left:right]).float()
        if total is None:
            total = logits.new_zeros((images.shape[0], logits.shape[1], height, width))
        total[..., top:bottom, left:right] += logits
        count[..., top:bottom, left:right] += 1
    return (total / count).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="val images evaluated per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pipeline-samples", type=int, default=20)
    parser.add_argument("--gpu-rate", type=float, default=40.0, help="images/s a GPU trains at")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="deeplabv3plus")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_cityscapes_layout(Path(tmp), {"train": 4, "val": args.images})
        cfg = compose(
            [
                "dataset=cityscapes",
                f"dataset.root={root}",
                "dataset.transform.crop=[512,1024]",
                "dataset.cache_in_memory=false",
                f"model={args.model}",
            ]
        )
        dcfg = prepare_dataset(cfg.dataset, tmp)
        rate = pipeline_rate(dcfg, args.pipeline_samples)
        print(
            f"data pipeline (decode 1024x2048 PNG pair + rescale 0.5-2 + crop 512x1024 + flip), "
            f"1 worker: {rate:.2f} img/s -> {args.gpu_rate:g} img/s needs "
            f"{args.gpu_rate / rate:.1f} workers"
        )

        device = resolve_device(args.device)
        dtype = amp_dtype("auto", device)
        model = build_model(cfg.model, 19).to(device).eval()
        val = build_dataset(dcfg, "val", train=False)
        batches = [(val[i][0][None].to(device), val[i][1][None].to(device)) for i in range(len(val))]
        for mode in ("whole", "slide"):
            infer = build_inference(model, dcfg, compose([f"inference.mode={mode}"]).inference)
            ratios, ours_rates = [], []
            for _ in range(args.repeats + 1):  # the first round warms up both sides
                times = {}
                for side in ("ours", "bare"):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        if side == "ours":
                            metric = ConfusionMatrix(19, 255)
                            for images, target in batches:
                                metric.update(predict_labels(model, images, device, dtype, infer=infer), target)
                            metric.compute()
                        else:
                            for images, _ in batches:
                                bare_predict(model, images, mode, infer.crop, infer.stride, infer.multiple)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[side] = time.perf_counter() - t0
                ratios.append(times["ours"] / times["bare"])
                ours_rates.append(len(batches) / times["ours"])
            ratios, ours_rates = ratios[1:], ours_rates[1:]
            print(
                f"eval {mode:5s} 1024x2048, {args.model}, {device.type}: "
                f"{statistics.median(ours_rates):.2f} img/s; ours/bare median "
                f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}, "
                f"{len(ratios)} repeats)"
            )


if __name__ == "__main__":
    main()
