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
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from segaudit import runs
from segaudit.core.config import check_targets, load_group_option, load_yaml, safe_instantiate, with_command_settings
from segaudit.core.console import console
from segaudit.core.devices import amp_dtype, autocast, device_label, resolve_device
from segaudit.core.errors import ConfigError, TrainingFailed, first_line
from segaudit.data import build_dataset, eval_loader, list_samples, prepare_dataset
from segaudit.data.check import preflight
from segaudit.data.conditions import DeviceImages
from segaudit.data.sampler import StepBatchSampler
from segaudit.measure.evaluation import evaluate
from segaudit.measure.information import PER_IMAGE_FILE, ImageScores, PerImage, load_per_image, save_per_image
from segaudit.models.build import build_model, check_encoder, freeze_encoder
from segaudit.models.checkpoints import init_weights, load_checkpoint, save_checkpoint
from segaudit.models.inference import (
    Inference,
    build_inference,
    inference_record,
    inference_settings,
    model_stride,
    pad_to_multiple,
)
from segaudit.runs.trackers import NoTracker, build_tracker
from segaudit.train.samples import write_sample_grid


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
    record: runs.RunRecord
    checkpoint: dict | None


def run_folder(cfg: DictConfig, command: str) -> Path:
    """Create a new run directory (config, first record), or find `cfg.resume`'s."""
    root = runs.runs_root(cfg)
    if cfg.resume:
        folder = root / runs.check_run_id(str(cfg.resume))  # ids like 123 arrive as ints
        if not (folder / runs.CONFIG).is_file():
            raise ConfigError(f"resume={cfg.resume}: no run with that id under {root}")
        return folder
    cfg = cfg.copy()
    cfg.dataset = prepare_dataset(cfg.dataset, cfg.paths.cache)
    skipped = {}
    if cfg.data_check.before_train:  # data problems fail here, before a run directory exists
        skipped = preflight(cfg.dataset, skip_bad=bool(cfg.data_check.skip_bad))
    for split in ("train", "val"):
        list_samples(cfg.dataset, split)
    folder, _ = runs.open_run(
        cfg,
        command,
        model=cfg.choices.model,
        encoder=cfg.model.encoder,
        loss=cfg.choices.loss,
        tiers=list(cfg.loss.get("tiers", [0])),
        train_condition=cfg.train_condition.name,
        eval_condition=cfg.eval_condition.name,
        iters=cfg.train.iters,
        skipped=skipped,
    )
    return folder


def reopen_run(folder: Path, cfg: DictConfig) -> Run:
    """An existing run directory with its saved config, record and checkpoint (if any).
    Where to write or send and how to run come from the command's `cfg`
    (`config.COMMAND_OWNED`), never from the folder: a run folder is a file anyone could edit."""
    saved = with_command_settings(load_yaml(folder / runs.CONFIG), cfg)
    check_targets(saved, str(folder / runs.CONFIG))
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


def val_loader(cfg: DictConfig, condition: DictConfig, pin: bool, ddp: Distributed = Distributed()) -> DataLoader:
    dataset = build_dataset(cfg.dataset, "val", train=False, condition=condition)
    if ddp.active:  # each rank scores a shard; the confusion matrices are summed
        dataset = Subset(dataset, range(ddp.rank, len(dataset), ddp.world_size))
    return eval_loader(dataset, int(cfg.train.eval_batch_size), int(cfg.train.num_workers), pin)


def train_loader(cfg: DictConfig, start_step: int, pin: bool, ddp: Distributed = Distributed()) -> DataLoader:
    dataset = build_dataset(cfg.dataset, "train", train=True, condition=cfg.train_condition)
    workers = int(cfg.train.num_workers)
    sampler = StepBatchSampler(
        len(dataset), cfg.train.batch_size, cfg.seed, start_step, rank=ddp.rank, world_size=ddp.world_size
    )
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin, persistent_workers=workers > 0
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[ips]} img/s"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


class RunLog:
    """`train.log` of a run: timestamped lines, echoed to the console; silent off rank 0."""

    def __init__(self, folder: Path, enabled: bool):
        self.file = open(folder / runs.LOG, "a", buffering=1) if enabled else None

    def __call__(self, message: str, echo: bool = True) -> None:
        if self.file is None:
            return
        self.file.write(f"{runs.now()} {message}\n")
        if echo:
            console.print(message, style="dim", highlight=False, markup=False)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def check_whole(value, key: str, least: int) -> int:
    """`value` if it is a whole number >= `least`, else a one-line ConfigError naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{key}={value}: expected a whole number >= {least}")
    return value


def _positive(value, key: str, allow_zero: bool = False) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        raise ConfigError(f"{key}={value}: expected a finite number {'>=' if allow_zero else '>'} 0")


def check_train_settings(cfg: DictConfig) -> None:
    """Refuse training settings no run can use (one line naming the key), before anything
    is written. A resumed run keeps its saved settings, so only new runs are checked."""
    if cfg.resume:
        return
    train_cfg = cfg.train
    if train_cfg.iters == "auto":
        raise ConfigError(
            "train.iters=auto: only `segaudit diagnose` trains in stages until the "
            "evidence decides; give a number of steps"
        )
    iters = check_whole(train_cfg.iters, "train.iters", 1)
    for key in ("batch_size", "eval_batch_size", "log_every", "ckpt_every"):
        check_whole(train_cfg[key], f"train.{key}", 1)
    check_whole(train_cfg.num_workers, "train.num_workers", 0)
    _positive(train_cfg.poly_power, "train.poly_power", allow_zero=True)
    if train_cfg.grad_clip is not None:
        _positive(train_cfg.grad_clip, "train.grad_clip")
    if "lr" in cfg.optim:
        _positive(cfg.optim.lr, "optim.lr")
    check_encoder(cfg.model.encoder)
    outside = [s for s in train_cfg.eval_at if isinstance(s, bool) or not isinstance(s, int) or not 0 < s <= iters]
    if outside:
        raise ConfigError(
            f"train.eval_at: step {outside[0]} is not within this run's 1..{iters} (the final step is always evaluated)"
        )


def train(cfg: DictConfig, command: str = "", stop_at: int | None = None) -> dict:
    """Train one model as configured and return its run record.

    A run killed at any point resumes with `resume=<run_id>` from its last checkpoint
    and ends at the same final step. A non-finite loss marks the record `failed` and
    raises `TrainingFailed`. With `stop_at` below `train.iters` the run stops there,
    evaluated and checkpointed, with status `paused`: the learning-rate schedule is the
    full run's, so resuming it (to a later `stop_at`, or to the end) trains exactly what
    an uninterrupted run would (`segaudit diagnose` trains in stages this way).
    """
    if stop_at is not None and (isinstance(stop_at, bool) or not isinstance(stop_at, int) or stop_at < 1):
        raise ConfigError(f"stop_at={stop_at}: expected a whole number >= 1")
    check_train_settings(cfg)  # fail on bad settings before a run directory exists
    build_tracker(cfg)  # a missing extra or a bad logger setting, too
    resolve_device(str(cfg.device))
    amp_dtype(str(cfg.train.amp), torch.device("cpu"))
    inference_settings(cfg.dataset, cfg.get("inference"))
    ddp = init_distributed(str(cfg.device))
    folder = _share_run_dir(ddp, lambda: run_folder(cfg, command))
    # Rank 0 holds the run's lock while it trains: a second `resume=` of the same run is
    # refused instead of writing beside it. The kernel drops the lock when the process
    # dies, so a crash never leaves a stale one.
    with runs.run_lock(folder) if ddp.is_main else nullcontext(), sigterm_as_interrupt():
        if ddp.is_main:
            runs.remove_stale_temp_files(folder)  # a kill mid-write leaves these behind
        run = reopen_run(folder, cfg)
        if run.record["status"] == "completed" or (
            stop_at is not None and run.record["status"] == "paused" and run.record["step"] >= stop_at
        ):
            if ddp.is_main and run.record["status"] == "completed":
                console.print(f"run {run.record['run_id']} is already completed")
            return run.record
        return _train_recording_failure(run, ddp, stop_at)


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (what `kill`, SLURM and torchrun send) stops a run the way Ctrl-C does: the
    record says how to resume. Only the main thread can own signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train_recording_failure(run: Run, ddp: Distributed, stop_at: int | None = None) -> runs.RunRecord:
    """`_train`, with any way out but success written to the record before it propagates."""
    record = run.record
    log = RunLog(run.dir, enabled=ddp.is_main)
    try:
        return _train(run, log, ddp, stop_at)
    except (KeyboardInterrupt, Exception) as err:  # record why, then let the caller report it
        interrupted = isinstance(err, KeyboardInterrupt)
        record.update(
            status="failed",
            finished_at=runs.now(),
            error=(
                f"interrupted (continue with: segaudit train resume={record['run_id']})"
                if interrupted
                else first_line(err)
            ),
        )
        if ddp.is_main:
            runs.write_record(run.dir, record)
        # The caller reports errors; only an interrupt needs its resume hint here.
        log(f"run failed: {record['error']}", echo=interrupted)
        raise
    finally:
        log.close()


# --------------------------------------------------------------------------- loop parts
@dataclass
class TrainState:
    """What one optimisation step touches, and what a checkpoint saves."""

    model: nn.Module  # the bare model: state_dict, gradient clipping
    forward_model: nn.Module  # what the steps run: the model, DDP-wrapped and/or compiled
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int = 0


def build_state(
    cfg: DictConfig, run: Run, device: torch.device, memory_format: torch.memory_format, log: RunLog
) -> TrainState:
    """Model (started from `train.init_from`, encoder frozen if asked), loss, optimizer and
    poly schedule, at step 0; `restore` moves it to a checkpoint."""
    model = build_model(cfg.model, int(cfg.dataset.num_classes), tiers=cfg.loss.get("tiers", [0]))
    if cfg.train.init_from and run.checkpoint is None:
        init_weights(model, Path(str(cfg.train.init_from)).expanduser())
        log(f"initialised from {cfg.train.init_from}")
    if cfg.train.freeze_encoder:
        freeze_encoder(model)
    model = model.to(device, memory_format=memory_format)
    loss_fn = safe_instantiate(
        cfg.loss, "loss", ignore_index=int(cfg.dataset.ignore_index), image_std=list(cfg.dataset.transform.std)
    ).to(device)
    optimizer = safe_instantiate(cfg.optim, "optim", params=[p for p in model.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.PolynomialLR(
        optimizer, total_iters=int(cfg.train.iters), power=float(cfg.train.poly_power)
    )
    return TrainState(model, model, loss_fn, optimizer, scheduler)


def restore(state: TrainState, checkpoint: dict, record: runs.RunRecord) -> None:
    """Continue from a checkpoint: weights, optimizer, schedule and step. History logged
    after that checkpoint is dropped, because those steps run again."""
    state.model.load_state_dict(checkpoint["model"])
    state.optimizer.load_state_dict(checkpoint["optimizer"])
    state.scheduler.load_state_dict(checkpoint["scheduler"])
    state.step = int(checkpoint["step"])
    record["history"] = [h for h in record["history"] if h["step"] <= state.step]
    record["train_log"] = [h for h in record["train_log"] if h["step"] <= state.step]


def earlier_per_image(folder: Path, step: int) -> dict[str, PerImage]:
    """The per-image scores a resumed run already saved, up to its checkpoint's `step`
    (later evaluations run again)."""
    path = folder / PER_IMAGE_FILE
    if step == 0 or not path.is_file():
        return {}
    entries, _ = load_per_image(path)
    return {key: value for key, value in entries.items() if int(key.split("/", 1)[0]) <= step}


def save_state(state: TrainState, cfg: DictConfig, path: Path) -> None:
    """The full checkpoint: model, optimizer, scheduler, step, RNG state, resolved config."""
    save_checkpoint(
        path,
        {
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "step": state.step,
            "rng": capture_rng(),
            "config": OmegaConf.to_container(cfg, resolve=True),
        },
    )


@dataclass
class Evaluations:
    """The validation loaders, one per condition (main condition first), and how the
    model sees their images."""

    loaders: list[tuple[DictConfig, DataLoader]]
    infer: Inference
    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool
    mean: list[float]
    std: list[float]
    stems: list[str]  # the val images, in the order per-image scores are indexed by
    per_image: dict[str, PerImage]  # "<step>/<condition>" -> that evaluation's per-image scores


def evaluate_all(state: TrainState, evals: Evaluations, cfg: DictConfig, record: runs.RunRecord, log: RunLog) -> dict:
    """Evaluate on every condition, append each result (with the mean log-likelihood in
    bits per labelled pixel, `nll_bits`) to the history, keep every image's scores in
    `evals.per_image`, and return the main (`eval_condition`) metrics."""
    t0 = time.perf_counter()
    results = {}
    num_classes = int(cfg.dataset.num_classes)
    for condition, loader in evals.loaders:
        images_fn = DeviceImages(condition, evals.mean, evals.std, evals.device, seeded=True)
        scores = ImageScores(num_classes, int(cfg.dataset.ignore_index), len(evals.stems))
        result = evaluate(
            state.forward_model,
            loader,
            num_classes,
            int(cfg.dataset.ignore_index),
            evals.device,
            evals.dtype,
            evals.channels_last,
            images_fn,
            evals.infer,
            scores,
        )
        per_image = scores.compute()
        evals.per_image[f"{state.step}/{condition.name}"] = per_image
        result["nll_bits"] = per_image.bits_per_pixel
        results[condition.name] = result
        record["history"].append({"step": state.step, "condition": condition.name, **result})
        log(
            f"step {state.step} [{condition.name}]: mIoU {result['miou']:.2f}  "
            f"mAcc {result['macc']:.2f}  aAcc {result['aacc']:.2f}  {result['nll_bits']:.3f} bits/pixel"
        )
    record["timings"]["eval_s"] += time.perf_counter() - t0
    record["metrics_by_condition"] = results
    return results[cfg.eval_condition.name]


class IntervalMeans:
    """The loss and each loss term, summed on the device step by step and read once per
    log interval: one host sync, which doubles as the NaN/inf check."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.t0 = time.perf_counter()

    def add(self, total: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        for name, value in {"loss": total.detach(), **terms}.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        self.steps += 1

    def read(self, ddp: Distributed) -> dict[str, float]:
        """Interval means (averaged over ranks, so that every rank stops together), then reset."""
        stacked = torch.stack([v.float() for v in self.sums.values()]) / self.steps
        if ddp.active:
            dist.all_reduce(stacked)
            stacked /= ddp.world_size
        means = dict(zip(self.sums, stacked.tolist()))
        self.sums, self.steps = {}, 0
        return means


def log_interval(
    means: dict[str, float], steps: int, elapsed: float, batch_images: int, state: TrainState, record: runs.RunRecord
) -> float:
    """Append one `train_log` entry (interval-mean loss and terms, lr, images/s) and return
    the images/s; a non-finite loss stops the run."""
    if not math.isfinite(means["loss"]):
        raise TrainingFailed(
            f"loss became {means['loss']} by step {state.step}; stopped (lower "
            f"optim.lr, set train.grad_clip, or check the labels)"
        )
    ips = steps * batch_images / max(elapsed, 1e-9)
    record["train_log"].append(
        {
            "step": state.step,
            "loss": means["loss"],
            "lr": state.scheduler.get_last_lr()[0],
            "ips": ips,
            **{k: v for k, v in means.items() if k != "loss"},
        }
    )
    return ips


def _device_setup(cfg: DictConfig, ddp: Distributed) -> tuple[torch.device, torch.dtype | None, bool]:
    """This rank's device (its own GPU under torchrun), the autocast dtype, channels_last."""
    device = resolve_device(str(cfg.device))
    if ddp.active and device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    setting = cfg.train.channels_last
    channels_last = device.type == "cuda" if setting == "auto" else bool(setting)
    return device, amp_dtype(str(cfg.train.amp), device), channels_last


def _wrap_for_steps(model: nn.Module, cfg: DictConfig, ddp: Distributed, device: torch.device) -> nn.Module:
    """The model as the training steps run it: DDP-wrapped under torchrun, compiled if asked."""
    if ddp.active:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if cfg.train.compile else model


# --------------------------------------------------------------------------- the loop
# About 80 lines on purpose: the loop reads top to bottom like nanoGPT's train.py (setup,
# restore, then steps with logging, evaluation and checkpoints at their boundaries).
def _train(run: Run, log: RunLog, ddp: Distributed, stop_at: int | None = None) -> runs.RunRecord:
    cfg, record = run.cfg, run.record
    t_start = time.perf_counter()
    device, dtype, channels_last = _device_setup(cfg, ddp)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    write_record = runs.write_record if ddp.is_main else (lambda *_: None)
    seed_everything(cfg.seed)

    state = build_state(cfg, run, device, memory_format, log)
    if run.checkpoint is not None:
        restore(state, run.checkpoint, record)
        log(f"resumed {record['run_id']} at step {state.step}/{cfg.train.iters}")
    state.forward_model = _wrap_for_steps(state.model, cfg, ddp, device)

    pin = device.type == "cuda"
    multiple = model_stride(state.model)  # crops of any size: pad to the stride, labels with ignore
    ignore_index = int(cfg.dataset.ignore_index)
    mean, std = list(cfg.dataset.transform.mean), list(cfg.dataset.transform.std)
    evals = Evaluations(
        [(c, val_loader(cfg, c, pin, ddp)) for c in eval_conditions(cfg)],
        build_inference(state.model, cfg.dataset, cfg.get("inference")),
        device,
        dtype,
        channels_last,
        mean,
        std,
        [s.stem for s in list_samples(cfg.dataset, "val")],
        earlier_per_image(run.dir, state.step),
    )
    loader = train_loader(cfg, state.step, pin, ddp)
    train_images = DeviceImages(cfg.train_condition, mean, std, device, seeded=False)
    record.update(
        status="running",
        error=None,
        step=state.step,
        device=device_label(device),
        world_size=ddp.world_size,
        inference=inference_record(evals.infer),
    )
    write_record(run.dir, record)
    tracker = build_tracker(cfg) if ddp.is_main else NoTracker()
    tracker.open(run.dir, record, cfg)

    iters = int(cfg.train.iters)
    end = iters if stop_at is None else min(stop_at, iters)  # a stage of a longer schedule
    eval_steps = {int(s) for s in cfg.train.eval_at if 0 < int(s) < end} | {end}
    log_every, ckpt_every = max(1, int(cfg.train.log_every)), max(1, int(cfg.train.ckpt_every))
    state.model.train()
    data = iter(loader)  # creating the iterator draws from the RNG: restore after it
    if run.checkpoint is not None:
        restore_rng(run.checkpoint["rng"])
    interval, train_s = IntervalMeans(), 0.0
    with (
        _progress() if cfg.train.progress and ddp.is_main else nullcontext() as progress,
        tracker.closed_on_error(run.dir, record),
    ):
        task = (
            progress.add_task(str(record["run_id"]), total=iters, completed=state.step, loss="-", ips="-")
            if progress
            else None
        )
        while state.step < end:
            images, target = next(data)
            images = train_images(images.to(device, non_blocking=True))
            images = pad_to_multiple(images, multiple).contiguous(memory_format=memory_format)
            target = pad_to_multiple(target.to(device, non_blocking=True), multiple, ignore_index)
            with autocast(device, dtype):
                out = state.loss_fn(state.forward_model, images, target)
            state.optimizer.zero_grad(set_to_none=True)
            out.total.backward()
            if cfg.train.grad_clip:
                nn.utils.clip_grad_norm_(state.model.parameters(), float(cfg.train.grad_clip))
            state.optimizer.step()
            state.scheduler.step()
            state.step += 1
            interval.add(out.total, out.terms)

            step = state.step
            if not (step % log_every == 0 or step % ckpt_every == 0 or step in eval_steps):
                continue
            steps_done, elapsed = interval.steps, time.perf_counter() - interval.t0
            ips = log_interval(interval.read(ddp), steps_done, elapsed, images.shape[0] * ddp.world_size, state, record)
            train_s += elapsed
            if progress:
                progress.update(task, completed=step, loss=f"{record['train_log'][-1]['loss']:.3f}", ips=f"{ips:.0f}")
            if step in eval_steps:
                record["metrics"] = evaluate_all(state, evals, cfg, record, log)
                if ddp.is_main:
                    save_per_image(run.dir / PER_IMAGE_FILE, evals.per_image, evals.stems)
            if step % ckpt_every == 0 or step == end:
                if ddp.is_main:
                    save_state(state, cfg, run.dir / runs.CHECKPOINT)
                record["step"] = step
                record["timings"]["train_s"] += train_s
                train_s = 0.0
                write_record(run.dir, record)
            tracker.sync(record)
            interval.t0 = time.perf_counter()

    record["timings"]["total_s"] += time.perf_counter() - t_start
    paused = state.step < iters
    record.update(
        status="paused" if paused else "completed",
        step=state.step,
        finished_at=None if paused else runs.now(),
        throughput_ips=_throughput(record["train_log"]),
    )
    write_record(run.dir, record)
    if paused:
        tracker.close(run.dir, record)
        log(
            f"paused {record['run_id']} at step {state.step}/{iters}: mIoU {record['metrics']['miou']:.2f} "
            f"(continue with: segaudit train resume={record['run_id']})"
        )
        return record
    tracker.close(run.dir, record, tracker.draw(lambda: _sample_grid(run, state, evals)))
    if ddp.active:
        dist.barrier()
    log(f"completed {record['run_id']}: mIoU {record['metrics']['miou']:.2f} after {state.step} iterations")
    return record


def end_paused_run(folder: Path, why: str) -> runs.RunRecord:
    """Mark a run paused at a stage boundary `completed` where it stands: it is a finished
    measurement at that step (`stopped_early` says where and why; its checkpoint stays,
    and `train.iters` is the schedule it was trained under)."""
    with runs.run_lock(folder):
        record = runs.read_record(folder)
        if record["status"] != "paused":
            return record
        record.update(
            status="completed",
            finished_at=runs.now(),
            stopped_early={"step": record["step"], "schedule": record.get("iters"), "why": why},
        )
        runs.write_record(folder, record)
    return record


def _sample_grid(run: Run, state: TrainState, evals: Evaluations) -> Path:
    """The trained model on 4 val images (real and noise input), for a tracker."""
    state.model.eval()
    return write_sample_grid(
        state.model,
        run.cfg.dataset,
        evals.device,
        evals.dtype,
        run.dir / "samples.png",
        f"{run.record['run_id']} at step {state.step}",
        evals.infer,
    )


def _throughput(train_log: list[dict]) -> float | None:
    """Median images/s over logged intervals (the first is warm-up and skipped when possible)."""
    values = [e["ips"] for e in train_log[1:] or train_log]
    return float(np.median(values)) if values else None
