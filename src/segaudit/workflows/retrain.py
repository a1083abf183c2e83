"""`segaudit retrain`: phase 2A/2B sweeps over models x datasets x seeds.

Every run of a sweep has a deterministic id (tier, model, dataset, seed and a hash of
everything else), so the same command again skips completed runs and resumes
interrupted ones from their checkpoints; concurrent runs never share a directory.
Launchers: in-process (default), N local processes (`--jobs N`), or a SLURM job array
through submitit (`--launcher slurm`; `launcher.cluster=local` runs it locally).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from segaudit import runs
from segaudit.core.config import compose, config_groups
from segaudit.core.errors import ConfigError, SegauditError, TrainingFailed
from segaudit.train.engine import check_train_settings, train
from segaudit.workflows.audit import audit

TIER_LOSS = {0: "ce", 1: "tier1", 2: "tier2", 3: "tier3"}
GATE_TIER = {"2A": 1, "2B": 2}


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its deterministic id and the overrides that define it; with a
    `target`, the run is an audit of that model (`segaudit audit inventory`)."""

    run_id: str
    overrides: tuple[str, ...]
    target: str | None = None

    @property
    def runs_root(self) -> Path:
        return Path(next(o.split("=", 1)[1] for o in self.overrides if o.startswith("paths.runs=")))

    def status(self) -> str | None:
        """The run's recorded status, or None when it has not started."""
        try:
            return runs.read_record(self.runs_root.expanduser() / self.run_id)["status"]
        except ConfigError:  # no record yet, or one a kill left unusable: run it (again)
            return None


def tier_from_gate(runs_root: Path, diagnose_id: str) -> int:
    """The tier a diagnose's decision gate chose (2A -> 1, 2B -> 2)."""
    record = runs.read_gate_record(runs_root, diagnose_id)
    decision = record["gate"]["decision"]
    if decision not in GATE_TIER:
        raise ConfigError(
            f"retrain.from_gate={diagnose_id}: the gate decided '{decision}' "
            f"({record['gate']['why']}); choose retrain.tier yourself"
        )
    return GATE_TIER[decision]


def plan(
    tier: int,
    models: list[str],
    datasets: list[str],
    seeds: list[int],
    extra: list[str],
    runs_root: str,
    strategy: str | None = None,
    init_from: str | None = None,
    freeze_encoder: bool = False,
) -> list[SweepRun]:
    """The cartesian product of models x datasets x seeds as runs with stable ids."""
    if tier not in TIER_LOSS:
        raise ConfigError(f"retrain.tier={tier}: choose 0, 1, 2 or 3")
    label = strategy or f"tier{tier}"
    shared = [
        f"loss={TIER_LOSS[tier]}",
        "phase=retrain",
        f"strategy={label}",
        f"paths.runs={runs_root}",
        "train.progress=false",
        *extra,
    ]
    if init_from:
        shared.append(f"train.init_from={init_from}")
    if freeze_encoder:
        shared.append("train.freeze_encoder=true")
    digest = hashlib.sha1("\n".join(sorted(shared)).encode()).hexdigest()[:6]
    return [
        SweepRun(
            f"retrain-{label}-{model}-{dataset}-s{seed}-{digest}",
            (f"model={model}", f"dataset={dataset}", f"seed={seed}", *shared),
        )
        for model, dataset, seed in itertools.product(models, datasets, seeds)
    ]


def run_one(run: SweepRun) -> dict:
    """Train (or resume, or skip) one sweep run in this process; every launcher ends here."""
    if run.status() == "completed":
        return {"run_id": run.run_id, "status": "skipped"}
    if run.target is not None:
        return _audit_one(run)
    if (run.runs_root.expanduser() / run.run_id / runs.CONFIG).is_file():
        cfg = compose([f"paths.runs={run.runs_root}", f"resume={run.run_id}"])
    else:
        cfg = compose([*run.overrides, f"run_id={run.run_id}"])
    record = train(cfg, command=f"segaudit retrain ({run.run_id})")
    return {"run_id": run.run_id, "status": record["status"], "miou": record["metrics"]["miou"]}


ELSEWHERE = runs.ELSEWHERE
ELSEWHERE_EXIT = 75  # EX_TEMPFAIL: a --jobs subprocess found the run claimed


def _audit_one(run: SweepRun) -> dict:
    """Audit one model under its claim (`runs.claim`); an audit that was interrupted is
    measured again from the start, one that another process is running is left to it."""
    root = run.runs_root.expanduser()
    with runs.claim(root, run.run_id) as mine:
        if not mine:
            return {"run_id": run.run_id, "status": ELSEWHERE}
        if run.status() == "completed":  # finished by another process since it was planned
            return {"run_id": run.run_id, "status": "skipped"}
        if (root / run.run_id).is_dir():  # unfinished and unclaimed: its process died
            shutil.rmtree(root / run.run_id)
        cfg = compose([*run.overrides, f"run_id={run.run_id}"])
        record = audit(
            cfg,
            run.target,
            command=f"segaudit audit inventory ({run.target})",
            on_given_dataset=any(o.startswith("dataset=") for o in run.overrides),
        )
    return {"run_id": run.run_id, "status": record["status"], "miou": record["metrics"]["miou"]}


def _run_subprocess(run: SweepRun, threads: int) -> dict:
    """One run as its own `python -m segaudit.workflows.retrain` process (for --jobs N)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    audit_args = [] if run.target is None else ["--audit", run.target]
    done = subprocess.run(
        [sys.executable, "-m", "segaudit.workflows.retrain", run.run_id, *audit_args, *run.overrides],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode == ELSEWHERE_EXIT:
        return {"run_id": run.run_id, "status": ELSEWHERE}
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return {"run_id": run.run_id, "status": "failed", "error": lines[-1] if lines else "failed"}
    return {"run_id": run.run_id, "status": run.status() or "failed"}


def _submitit(todo: list[SweepRun], launcher: DictConfig) -> list[dict]:
    import submitit  # only the slurm launcher needs it: local sweeps start without it

    executor = submitit.AutoExecutor(folder=str(launcher.folder), cluster=launcher.cluster)
    params = {
        "timeout_min": int(launcher.timeout_min),
        "cpus_per_task": int(launcher.cpus_per_task),
        "mem_gb": int(launcher.mem_gb),
        "gpus_per_node": int(launcher.gpus_per_node),
    }
    if executor.cluster == "slurm":
        params["slurm_array_parallelism"] = int(launcher.array_parallelism)
        if launcher.partition:
            params["slurm_partition"] = str(launcher.partition)
    if executor.cluster == "local":
        params.pop("mem_gb")
    executor.update_parameters(**params)
    jobs = executor.map_array(run_one, todo)
    results = []
    for run, job in zip(todo, jobs):
        try:
            results.append(job.result())
        except Exception as err:  # noqa: BLE001 - a failed array task is reported, not fatal
            results.append({"run_id": run.run_id, "status": "failed", "error": str(err).strip().splitlines()[-1]})
    return results


def launch(planned: list[SweepRun], launcher: DictConfig, jobs: int) -> list[dict]:
    """Run every planned run that is not completed yet; returns one result per run."""
    done = {r.run_id for r in planned if r.status() == "completed"}
    results = [{"run_id": run_id, "status": "skipped"} for run_id in sorted(done)]
    todo = [r for r in planned if r.run_id not in done]
    if not todo:
        return results
    if launcher.name == "slurm":
        return results + _submitit(todo, launcher)
    progress = Progress(
        TextColumn("[bold]sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(),
    )
    with progress:
        task = progress.add_task("sweep", total=len(planned), completed=len(results), last="")
        if jobs <= 1:
            for run in todo:
                results.append(_guarded(run))
                progress.update(task, advance=1, last=f"{run.run_id}: {results[-1]['status']}")
        else:
            threads = max(1, (os.cpu_count() or 1) // jobs)
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(_run_subprocess, run, threads) for run in todo]
                for future in as_completed(futures):
                    results.append(future.result())
                    progress.update(task, advance=1, last=f"{results[-1]['run_id']}: {results[-1]['status']}")
    return results


def _guarded(run: SweepRun) -> dict:
    try:
        return run_one(run)
    except (SegauditError, TrainingFailed) as err:
        return {"run_id": run.run_id, "status": "failed", "error": str(err)}


if (
    __name__ == "__main__"
):  # one run of a --jobs N sweep: python -m segaudit.workflows.retrain RUN_ID [--audit SOURCE] OVERRIDES...
    args = sys.argv[2:]
    source = args[1] if args[:1] == ["--audit"] else None
    result = _guarded(SweepRun(sys.argv[1], tuple(args[2:] if source else args), target=source))
    if result["status"] == "failed":
        print(result.get("error", "failed"), file=sys.stderr)
        sys.exit(1)
    if result["status"] == ELSEWHERE:
        sys.exit(ELSEWHERE_EXIT)


def retrain(cfg: DictConfig, overrides: list[str]) -> list[dict]:
    """`segaudit retrain`: plan the sweep that `cfg.retrain` describes, run what is not done
    yet, return one result per run.

    Args:
        cfg: the composed config; `retrain.*` says what to sweep, `launcher` how to run it.
        overrides: the command's overrides, passed on to every run (less the keys that
            belong to the sweep itself: paths.runs, launcher, retrain.*).
    """
    rcfg = cfg.retrain
    runs_root = str(runs.runs_root(cfg).resolve())
    tier = None if rcfg.tier is None else _whole(rcfg.tier, "retrain.tier")
    if rcfg.from_gate is not None:
        tier = tier_from_gate(Path(runs_root), str(rcfg.from_gate))
    if tier is None:
        raise ConfigError("retrain needs retrain.tier=N or retrain.from_gate=DIAGNOSE_ID")
    models, datasets = _names(rcfg.models, "retrain.models"), _names(rcfg.datasets, "retrain.datasets")
    seeds = [_whole(seed, "retrain.seeds") for seed in _names(rcfg.seeds, "retrain.seeds")]
    jobs = _whole(rcfg.jobs, "retrain.jobs")
    if jobs < 1:
        raise ConfigError(f"retrain.jobs={jobs}: give 1 or more parallel processes")
    groups = config_groups()
    for group, names in (("model", models), ("dataset", datasets)):
        unknown = [n for n in names if n not in groups[group]]
        if unknown:
            raise ConfigError(f"unknown {group} '{unknown[0]}' (choices: {', '.join(groups[group])})")
    check_train_settings(cfg)  # a bad setting fails once here, not once per planned run
    init_from = None if rcfg.init_from is None else str(rcfg.init_from)
    if init_from is not None and not Path(init_from).expanduser().is_file():
        raise ConfigError(f"retrain.init_from={init_from}: checkpoint not found")
    extra = [
        o for o in overrides if not o.startswith(("paths.runs=", "launcher=", "launcher.", "retrain.", "+retrain."))
    ]
    planned = plan(
        tier,
        models,
        datasets,
        seeds,
        extra,
        runs_root,
        None if rcfg.strategy is None else str(rcfg.strategy),
        str(Path(init_from).expanduser().resolve()) if init_from else None,
        bool(rcfg.freeze_encoder),
    )
    return launch(planned, cfg.launcher, jobs)


def _names(value, key: str) -> list[str]:
    """A list key given as a list (`[unet,pspnet]`) or as comma-separated text (`unet,pspnet`)."""
    items = value.split(",") if isinstance(value, str) else [value] if isinstance(value, int) else list(value)
    names = [str(item).strip() for item in items if str(item).strip()]
    if not names:
        raise ConfigError(f"{key}: give at least one value")
    return names


def _whole(value, key: str) -> int:
    """`value` as a whole number, or one line naming `key`."""
    try:
        if isinstance(value, bool) or float(value) != int(float(value)):
            raise ValueError
        return int(float(value))
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value}: expected a whole number") from None
