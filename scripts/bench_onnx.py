"""Benchmark an ONNX export against the PyTorch model it came from: images per second.

The same smp DeepLabV3+ (ResNet-18, random weights: speed does not depend on them) runs
as eager PyTorch and as onnxruntime (the CUDA provider on a GPU, else CPU), on batches of
one image size. Repeats alternate the two; the report is the median img/s of each with
its range and the median ratio onnx/torch. The first call of each (graph set-up, memory
planning) is a one-off cost timed apart.

    python scripts/bench_onnx.py                        # CPU, 256x512, batch 2, 5 repeats
    python scripts/bench_onnx.py --size 512 1024 --batches 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch.export import Dim

from segaudit.models.sources import OnnxModel


def throughput(model, images: torch.Tensor, batches: int) -> float:
    """Images per second over `batches` forward passes (after the first)."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(batches):
            model(images)
        return batches * images.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=[256, 512])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--batches", type=int, default=5, help="forward passes per timing")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = smp.DeepLabV3Plus("resnet18", encoder_weights=None, classes=19).eval()
    images = torch.randn(args.batch, 3, *args.size)
    path = Path(tempfile.mkdtemp(prefix="bench-onnx-")) / "model.onnx"
    shapes = ({0: Dim("batch", min=1, max=64), 2: Dim("h", min=32, max=4096), 3: Dim("w", min=32, max=4096)},)
    torch.onnx.export(model, (images,), str(path), dynamo=True, dynamic_shapes=shapes)
    onnx = OnnxModel(path)
    first = {}
    for name, runner in (("torch", model), ("onnx", onnx)):
        t0 = time.perf_counter()
        with torch.inference_mode():
            runner(images)
        first[name] = time.perf_counter() - t0
    rates = {"torch": [], "onnx": []}
    for _ in range(args.repeats):
        rates["torch"].append(throughput(model, images, args.batches))
        rates["onnx"].append(throughput(onnx, images, args.batches))
    ratios = [o / t for o, t in zip(rates["onnx"], rates["torch"])]
    print(
        f"DeepLabV3+/ResNet-18, {args.size[0]}x{args.size[1]}, batch {args.batch}, "
        f"{args.batches} batches x {args.repeats} repeats; providers {onnx.session.get_providers()}; "
        f"{torch.get_num_threads()} torch threads"
    )
    for name, values in rates.items():
        print(
            f"  {name}: {statistics.median(values):.1f} img/s (range {min(values):.1f}-{max(values):.1f}); "
            f"first call {first[name]:.2f} s"
        )
    print(
        f"  ratio onnx/torch img/s: median {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
