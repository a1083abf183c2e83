"""Benchmark: segaudit's unified loop vs a bare PyTorch loop, same model, batch and data.

Both sides build the same smp model, the same in-memory dataset (decoded once, uint8)
with the same transforms and batch sampler, AdamW and the poly schedule, then train the
same number of iterations. segaudit's side is `engine.train` end to end (run directory,
config and record writes, NaN checks, progress bar, checkpoint) minus its evaluation;
the bare side is the loop alone. Runs alternate to share the machine's drift; the
report is the median per-iteration time ratio (ours / bare), target <= 1.05.

    python scripts/bench_loop.py                  # CPU defaults: 64 px, batch 8, 60 iters
    python scripts/bench_loop.py --iters 200 --device cuda --batch-size 16 --size 512
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from segaudit.core.config import compose
from segaudit.core.devices import amp_dtype, resolve_device
from segaudit.data import build_dataset, prepare_dataset
from segaudit.data.sampler import StepBatchSampler
from segaudit.models.build import build_model
from segaudit.train.engine import seed_everything, train


def bare_loop(cfg, iters: int) -> float:
    """Seconds for a plain PyTorch loop over the same model, data and optimizer."""
    t0 = time.perf_counter()
    device = resolve_device(str(cfg.device))
    dtype = amp_dtype(str(cfg.train.amp), device)
    channels_last = device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    seed_everything(cfg.seed)
    dataset_cfg = prepare_dataset(cfg.dataset, cfg.paths.cache)
    dataset = build_dataset(dataset_cfg, "train", train=True)
    loader = DataLoader(
        dataset,
        batch_sampler=StepBatchSampler(len(dataset), cfg.train.batch_size, cfg.seed),
        pin_memory=device.type == "cuda",
    )
    model = build_model(cfg.model, int(dataset_cfg.num_classes)).to(device, memory_format=memory_format)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        fused=bool(cfg.optim.get("fused", False)),
    )
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=iters, power=0.9)
    model.train()
    data = iter(loader)
    for _ in range(iters):
        images, target = next(data)
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        target = target.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images)
        loss = F.cross_entropy(logits.float(), target, ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def ours(cfg) -> float:
    """Seconds for `engine.train`, end to end, minus the time it spent evaluating."""
    t0 = time.perf_counter()
    record = train(cfg)
    return time.perf_counter() - t0 - record["timings"]["eval_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="synthetic scene size (px)")
    parser.add_argument("--model", default="deeplabv3plus")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"model={args.model}",
            f"device={args.device}",
            f"train.iters={args.iters}",
            f"train.batch_size={args.batch_size}",
            f"dataset.generate.size={args.size}",
            f"dataset.transform.crop=[{args.size},{args.size}]",
            "dataset.generate.n_val=8",
            f"paths.runs={tmp}/runs",
        ]
        cfg = compose(overrides)
        prepare_dataset(cfg.dataset, cfg.paths.cache)  # generate once, outside the timings
        ratios = []
        for repeat in range(args.repeats):
            t_bare = bare_loop(cfg, args.iters)
            t_ours = ours(compose(overrides))
            ratios.append(t_ours / t_bare)
            print(
                f"repeat {repeat}: bare {t_bare / args.iters * 1e3:.1f} ms/iter, "
                f"segaudit {t_ours / args.iters * 1e3:.1f} ms/iter, ratio {ratios[-1]:.3f}"
            )
    device = resolve_device(args.device)
    print(
        f"{args.model} {args.size}px batch {args.batch_size} on {device}: "
        f"median ratio segaudit/bare = {statistics.median(ratios):.3f} (target <= 1.05)"
    )


if __name__ == "__main__":
    main()
