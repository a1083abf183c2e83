"""The unified train / evaluate loop: one place, top to bottom.

`train(cfg)` creates (or resumes) a run directory, builds data, model, loss, optimizer
and poly schedule from the config, runs an iteration-based loop, evaluates at
`train.eval_at` and at the final step, and keeps a full checkpoint (model, optimizer,
scheduler, step, RNG state, resolved config) that a killed run resumes from.
"""

from __future__ import annotations

import atexit
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from segaudit import runs
from segaudit.checkpoints import init_weights, load_checkpoint, save_checkpoint
from segaudit.config import load_group_option, load_yaml, to_yaml
from segaudit.console import console
from segaudit.data import build_dataset, eval_loader, list_samples, prepare_dataset
from segaudit.data.check import preflight
from segaudit.data.conditions import DeviceImages
from segaudit.data.sampler import StepBatchSampler
from segaudit.devices import amp_dtype, autocast, device_label, package_versions, resolve_device
from segaudit.errors import ConfigError, TrainingFailed
from segaudit.evaluation import evaluate
from segaudit.inference import (build_inference, inference_record, inference_settings, model_stride,
                                pad_to_multiple)
from segaudit.models import build_model


# --------------------------------------------------------------------------- DDP
@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(device_setting: str) -> Distributed:
    """Join the process group torchrun describes (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if not dist.is_initialized():
        on_gpu = torch.cuda.is_available() and device_setting != "cpu"
        dist.init_process_group("nccl" if on_gpu else "gloo")
        atexit.register(dist.destroy_process_group)
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _share_run_dir(ddp: Distributed, make_run) -> Path:
    """Rank 0 creates (or reopens) the run directory; every rank learns where it is.

    An error on rank 0 is sent to the others too, so no rank waits forever.
    """
    payload: list = [None]
    if ddp.is_main:
        try:
            payload = [("ok", str(make_run()))]
        except Exception as err:  # noqa: BLE001 - re-raised below, after the broadcast
            payload = [("error", err)]
    if ddp.active:
        dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        raise value
    return Path(value)


# --------------------------------------------------------------------------- RNG
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """RNG states as plain types and tensors, so checkpoints load with weights_only=True."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


# --------------------------------------------------------------------------- the run
@dataclass
class Run:
    """A run directory with its resolved config, record and (when resuming) checkpoint."""

    dir: Path
    cfg: DictConfig
    record: dict
    checkpoint: dict | None


def _new_record(cfg: DictConfig, run_id: str, command: str) -> dict:
    return runs.new_record(
        cfg, run_id, command, model=cfg.choices.model, encoder=cfg.model.encoder,
        loss=cfg.choices.loss, tiers=list(cfg.loss.get("tiers", [0])),
        train_condition=cfg.train_condition.name, eval_condition=cfg.eval_condition.name,
        iters=cfg.train.iters, versions=package_versions(),
    )


def run_folder(cfg: DictConfig, command: str) -> Path:
    """Create a new run directory (config, first record), or find `cfg.resume`'s."""
    runs_root = Path(str(cfg.paths.runs)).expanduser()
    if cfg.resume:
        folder = runs_root / str(cfg.resume)  # ids like 123 arrive as ints
        if not (folder / runs.CONFIG).is_file():
            raise ConfigError(f"resume={cfg.resume}: no run with that id under {runs_root}")
        return folder
    cfg = cfg.copy()
    cfg.dataset = prepare_dataset(cfg.dataset, cfg.paths.cache)
    skipped = {}
    if cfg.data_check.before_train:  # data problems fail here, before a run directory exists
        skipped = preflight(cfg.dataset, skip_bad=bool(cfg.data_check.skip_bad))
    for split in ("train", "val"):
        list_samples(cfg.dataset, split)
    folder = runs.new_run_dir(runs_root, cfg.phase, None if cfg.run_id is None else str(cfg.run_id))
    cfg.run_id = folder.name
    (folder / runs.CONFIG).write_text(to_yaml(cfg))
    record = _new_record(cfg, folder.name, command)
    record["skipped"] = skipped
    runs.write_record(folder, record)
    return folder


def reopen_run(folder: Path) -> Run:
    """An existing run directory with its saved config, record and checkpoint (if any)."""
    saved = load_yaml(folder / runs.CONFIG)
    record = runs.read_record(folder)
    ckpt_path = folder / runs.CHECKPOINT
    checkpoint = load_checkpoint(ckpt_path) if ckpt_path.is_file() else None
    return Run(folder, saved, record, checkpoint)


def eval_conditions(cfg: DictConfig) -> list[DictConfig]:
    """The evaluation condition first, then each of `eval_also` (no repeats)."""
    conditions = [cfg.eval_condition]
    for name in cfg.get("eval_also") or []:
        if name not in [c.name for c in conditions]:
            conditions.append(load_group_option("condition", str(name)))
    return conditions


def val_loader(cfg: DictConfig, condition: DictConfig, pin: bool,
               ddp: Distributed = Distributed()) -> DataLoader:
    dataset = build_dataset(cfg.dataset, "val", train=False, condition=condition)
    if ddp.active:  # each rank scores a shard; the confusion matrices are summed
        dataset = Subset(dataset, range(ddp.rank, len(dataset), ddp.world_size))
    return eval_loader(dataset, int(cfg.train.eval_batch_size), int(cfg.train.num_workers), pin)


def train_loader(cfg: DictConfig, start_step: int, pin: bool,
                 ddp: Distributed = Distributed()) -> DataLoader:
    dataset = build_dataset(cfg.dataset, "train", train=True, condition=cfg.train_condition)
    workers = int(cfg.train.num_workers)
    sampler = StepBatchSampler(len(dataset), cfg.train.batch_size, cfg.seed, start_step,
                               rank=ddp.rank, world_size=ddp.world_size)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin,
                      persistent_workers=workers > 0)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[ips]} img/s"),
        TimeRemainingColumn(), console=console, transient=False,
    )


def train(cfg: DictConfig, command: str = "") -> dict:
    """Train one model as configured and return its run record.

    A run killed at any point resumes with `resume=<run_id>` from its last checkpoint
    and ends at the same final step. A non-finite loss marks the record `failed` and
    raises `TrainingFailed`.
    """
    resolve_device(str(cfg.device))  # fail on bad settings before a run directory exists
    amp_dtype(str(cfg.train.amp), torch.device("cpu"))
    inference_settings(cfg.dataset, cfg.get("inference"))
    ddp = init_distributed(str(cfg.device))
    folder = _share_run_dir(ddp, lambda: run_folder(cfg, command))
    run = reopen_run(folder)
    cfg, record = run.cfg, run.record
    if record["status"] == "completed":
        if ddp.is_main:
            console.print(f"run {record['run_id']} is already completed")
        return record
    log_file = open(run.dir / runs.LOG, "a", buffering=1) if ddp.is_main else None

    def log(message: str, echo: bool = True) -> None:
        if log_file is None:  # only rank 0 speaks
            return
        log_file.write(f"{runs.now()} {message}\n")
        if echo:
            console.print(message, style="dim", highlight=False, markup=False)

    try:
        return _train(cfg, run, record, log, ddp)
    except (KeyboardInterrupt, Exception) as err:  # record why, then let the caller report it
        record["status"] = "failed"
        record["error"] = (
            f"interrupted (continue with: segaudit train resume={record['run_id']})"
            if isinstance(err, KeyboardInterrupt) else str(err).splitlines()[0] if str(err) else repr(err)
        )
        record["finished_at"] = runs.now()
        if ddp.is_main:
            runs.write_record(run.dir, record)
        # The caller reports errors; only an interrupt needs its resume hint here.
        log(f"run failed: {record['error']}", echo=isinstance(err, KeyboardInterrupt))
        raise
    finally:
        if log_file is not None:
            log_file.close()


def _train(cfg: DictConfig, run: Run, record: dict, log, ddp: Distributed) -> dict:
    t_start = time.perf_counter()
    device = resolve_device(str(cfg.device))
    if ddp.active and device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    write_record = runs.write_record if ddp.is_main else (lambda *_: None)
    dtype = amp_dtype(str(cfg.train.amp), device)
    channels_last = device.type == "cuda" if cfg.train.channels_last == "auto" else bool(cfg.train.channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)

    # Model, loss, optimizer, schedule.
    num_classes, ignore_index = int(cfg.dataset.num_classes), int(cfg.dataset.ignore_index)
    model = build_model(cfg.model, num_classes, tiers=cfg.loss.get("tiers", [0]))
    if cfg.train.init_from and run.checkpoint is None:
        init_weights(model, Path(str(cfg.train.init_from)).expanduser())
        log(f"initialised from {cfg.train.init_from}")
    if cfg.train.freeze_encoder:
        for param in model.encoder.parameters():
            param.requires_grad_(False)
    model = model.to(device, memory_format=memory_format)
    loss_fn = instantiate(cfg.loss, ignore_index=ignore_index,
                          image_std=list(cfg.dataset.transform.std)).to(device)
    optimizer = instantiate(cfg.optim, params=[p for p in model.parameters() if p.requires_grad])
    iters = int(cfg.train.iters)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=iters,
                                                      power=float(cfg.train.poly_power))
    step = 0
    if run.checkpoint is not None:
        model.load_state_dict(run.checkpoint["model"])
        optimizer.load_state_dict(run.checkpoint["optimizer"])
        scheduler.load_state_dict(run.checkpoint["scheduler"])
        step = int(run.checkpoint["step"])
        log(f"resumed {record['run_id']} at step {step}/{iters}")
    # Entries logged after the checkpoint are replayed, so drop them.
    record["history"] = [h for h in record["history"] if h["step"] <= step]
    record["train_log"] = [h for h in record["train_log"] if h["step"] <= step]
    forward_model = model
    if ddp.active:
        forward_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        forward_model = torch.compile(forward_model)

    pin = device.type == "cuda"
    multiple = model_stride(model)  # crops of any size: pad to the stride, labels with ignore
    infer = build_inference(model, cfg.dataset, cfg.get("inference"))
    loader = train_loader(cfg, step, pin, ddp)
    evaluations = [(c, val_loader(cfg, c, pin, ddp)) for c in eval_conditions(cfg)]
    mean, std = cfg.dataset.transform.mean, cfg.dataset.transform.std
    train_images = DeviceImages(cfg.train_condition, mean, std, device, seeded=False)
    record.update(status="running", error=None, step=step, device=device_label(device),
                  world_size=ddp.world_size, inference=inference_record(infer))
    write_record(run.dir, record)

    def checkpoint_now() -> None:
        if not ddp.is_main:
            return
        save_checkpoint(run.dir / runs.CHECKPOINT, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "step": step, "rng": capture_rng(),
            "config": OmegaConf.to_container(cfg, resolve=True),
        })

    def evaluate_now() -> dict:
        """Evaluate on every condition; returns the main (eval_condition) metrics."""
        t0 = time.perf_counter()
        results = {}
        for condition, loader_ in evaluations:
            images_fn = DeviceImages(condition, mean, std, device, seeded=True)
            result = evaluate(forward_model, loader_, num_classes, ignore_index, device, dtype,
                              channels_last, images_fn, infer)
            results[condition.name] = result
            record["history"].append({"step": step, "condition": condition.name, **result})
            log(f"step {step} [{condition.name}]: mIoU {result['miou']:.2f}  "
                f"mAcc {result['macc']:.2f}  aAcc {result['aacc']:.2f}")
        record["timings"]["eval_s"] += time.perf_counter() - t0
        record["metrics_by_condition"] = results
        return results[cfg.eval_condition.name]

    eval_steps = {int(s) for s in cfg.train.eval_at if 0 < int(s) < iters} | {iters}
    log_every, ckpt_every = max(1, int(cfg.train.log_every)), max(1, int(cfg.train.ckpt_every))
    model.train()
    data = iter(loader)  # creating the iterator draws from the RNG: restore after it
    if run.checkpoint is not None:
        restore_rng(run.checkpoint["rng"])
    loss_sum = torch.zeros((), device=device)
    interval_steps, interval_t0, train_s = 0, time.perf_counter(), 0.0
    with _progress() if cfg.train.progress and ddp.is_main else nullcontext() as progress:
        task = progress.add_task(str(record["run_id"]), total=iters, completed=step, loss="-", ips="-") if progress else None
        while step < iters:
            images, target = next(data)
            images = train_images(images.to(device, non_blocking=True))
            images = pad_to_multiple(images, multiple).contiguous(memory_format=memory_format)
            target = pad_to_multiple(target.to(device, non_blocking=True), multiple, ignore_index)
            with autocast(device, dtype):
                out = loss_fn(forward_model, images, target)
            optimizer.zero_grad(set_to_none=True)
            out.total.backward()
            if cfg.train.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), float(cfg.train.grad_clip))
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += out.total.detach()
            interval_steps += 1

            boundary = step % log_every == 0 or step % ckpt_every == 0 or step in eval_steps
            if not boundary:
                continue
            # One host sync per interval: the loss readout doubles as the NaN/inf check,
            # averaged over ranks so that every rank stops together.
            if ddp.active:
                dist.all_reduce(loss_sum)
                loss_sum /= ddp.world_size
            mean_loss = float(loss_sum) / interval_steps
            elapsed = time.perf_counter() - interval_t0
            train_s += elapsed
            ips = interval_steps * images.shape[0] * ddp.world_size / max(elapsed, 1e-9)
            if not math.isfinite(mean_loss):
                raise TrainingFailed(
                    f"loss became {mean_loss} by step {step}; stopped (lower optim.lr, "
                    f"set train.grad_clip, or check the labels)"
                )
            terms = {k: float(v) for k, v in out.terms.items()}
            record["train_log"].append({"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                                        "ips": ips, **terms})
            if progress:
                progress.update(task, completed=step, loss=f"{mean_loss:.3f}", ips=f"{ips:.0f}")
            if step in eval_steps:
                record["metrics"] = evaluate_now()
            if step % ckpt_every == 0 or step == iters:
                checkpoint_now()
                record["step"] = step
                record["timings"]["train_s"] += train_s
                train_s = 0.0
                write_record(run.dir, record)
            loss_sum.zero_()
            interval_steps, interval_t0 = 0, time.perf_counter()

    timings = record["timings"]
    timings["total_s"] += time.perf_counter() - t_start
    record.update(status="completed", step=step, finished_at=runs.now(),
                  throughput_ips=_throughput(record["train_log"]))
    write_record(run.dir, record)
    if ddp.active:
        dist.barrier()
    log(f"completed {record['run_id']}: mIoU {record['metrics']['miou']:.2f} after {step} iterations")
    return record


def _throughput(train_log: list[dict]) -> float | None:
    """Median images/s over logged intervals (the first is warm-up and skipped when possible)."""
    values = [e["ips"] for e in train_log[1:] or train_log]
    return float(np.median(values)) if values else None
