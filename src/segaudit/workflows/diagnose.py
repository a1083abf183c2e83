"""Phase 1 of the investigation as one command: `diagnose` -> verdict -> decision gate.

Every step is a run in the table sharing one `diagnose_id`; the verdict and the gate's
decision are stored in a final record (`phase=gate`, run id = diagnose id) that
`segaudit retrain retrain.from_gate=ID` follows. The rules live in `segaudit.diagnostics.verdict`; the
numbers they read come from `segaudit.measure.evidence`.

The baseline and the shuffled-pair control train side by side. With `train.iters=auto`
(the command's default) they train in stages, doubling from `diagnose.first_iters` up to
`diagnose.max_iters`, each stage resumed from the last one's checkpoint under one
learning-rate schedule (nothing is trained twice), until the verdict is decisive. With a
number, they train that many steps and are evaluated half-way too, for the learning curve.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig

from segaudit import runs
from segaudit.core.config import load_group_option
from segaudit.core.console import console
from segaudit.core.errors import ConfigError
from segaudit.data import build_dataset, list_samples, prepare_dataset
from segaudit.data.check import preflight
from segaudit.diagnostics.classes import class_rows, content_line
from segaudit.diagnostics.suspects import check_suspects_settings, summary_line, training_pairs_test
from segaudit.diagnostics.verdict import DECISIVE, NEXT_CHECKS, PIPELINE_FAULT, Evidence, decide, next_steps, verdict
from segaudit.measure.consistency import consistency_lines, split_consistency
from segaudit.measure.evidence import Bootstrap, Estimate, diagnose_evidence
from segaudit.measure.information import PER_IMAGE_FILE, PerImage, load_per_image
from segaudit.models.losses import IMPLEMENTED_TIERS
from segaudit.report.pictures import diagnose_plots
from segaudit.train.engine import check_train_settings, check_whole, end_paused_run, train
from segaudit.workflows.prior import run_prior
from segaudit.workflows.recording import record_finished
from segaudit.workflows.suspects import find_suspects


@dataclass
class Budget:
    """How long the diagnose's models train: stop points `stages` (the last is the most a
    diagnose spends) under one schedule of `schedule` steps."""

    auto: bool
    stages: list[int]
    schedule: int


def plan_budget(cfg: DictConfig) -> Budget:
    """The stages of `train.iters=auto` (doubling from `diagnose.first_iters` up to
    `diagnose.max_iters`), or the one stage of a fixed `train.iters`.

    Raises:
        ConfigError: a budget no diagnose can run.
    """
    iters = cfg.train.iters
    if iters != "auto":
        check_whole(iters, "train.iters", 1)
        return Budget(False, [iters], iters)
    first = check_whole(cfg.diagnose.first_iters, "diagnose.first_iters", 1)
    cap = check_whole(cfg.diagnose.max_iters, "diagnose.max_iters", first)
    stages = [first]
    while stages[-1] * 2 <= cap:
        stages.append(stages[-1] * 2)
    if stages[-1] != cap:
        stages.append(cap)
    return Budget(True, stages, cap)


def _step_cfg(cfg: DictConfig, strategy: str, train_on: str, eval_on: str, **extra) -> DictConfig:
    step = cfg.copy()
    step.phase = "diagnose"
    step.strategy = strategy
    step.run_id = None
    step.train_condition = load_group_option("condition", train_on)
    step.eval_condition = load_group_option("condition", eval_on)
    for key, value in extra.items():
        step[key] = value
    return step


def _refuse_early(cfg: DictConfig) -> Budget:
    """Every refusal comes before the first step writes anything: the budget, bad training
    settings, and a diagnose id that is unsafe or taken (it names the gate record written
    last)."""
    budget = plan_budget(cfg)
    cfg.train.iters = budget.schedule
    check_train_settings(cfg)
    if cfg.diagnose.suspects:
        check_suspects_settings(cfg)
    if cfg.run_id is not None:
        runs.check_new_run_id(runs.runs_root(cfg), str(cfg.run_id))
    return budget


class StagedRun:
    """One model a diagnose trains in stages: the first `advance` starts the run, later
    ones resume it to the next stop."""

    def __init__(self, cfg: DictConfig, command: str):
        self.cfg, self.command = cfg, command
        self.record: dict | None = None

    def advance(self, stop: int) -> dict:
        cfg = self.cfg
        if self.record is not None:
            cfg = self.cfg.copy()
            cfg.resume = self.record["run_id"]
        self.record = train(cfg, self.command, stop_at=stop)
        return self.record

    def per_image(self, stems: list[str]) -> dict[str, PerImage]:
        """Its per-image scores of every evaluation so far, checked to be of `stems`' images."""
        entries, own = load_per_image(runs.runs_root(self.cfg) / self.record["run_id"] / PER_IMAGE_FILE)
        if own != stems:
            raise ConfigError(
                f"run {self.record['run_id']}: its val images differ from the prior's "
                f"(the dataset changed during the diagnose?)"
            )
        return entries

    def end(self, why: str) -> None:
        """Mark the run completed where it stopped (when it stopped before its schedule's end)."""
        if self.record is not None and self.record["status"] == "paused":
            self.record = end_paused_run(runs.runs_root(self.cfg) / self.record["run_id"], why)


def _by_step(entries: dict[str, PerImage], condition: str) -> dict[int, PerImage]:
    return {int(key.split("/", 1)[0]): value for key, value in entries.items() if key.split("/", 1)[1] == condition}


def _reference(prior: dict, cfg: DictConfig) -> dict[str, PerImage]:
    entries, stems = load_per_image(runs.runs_root(cfg) / prior["run_id"] / PER_IMAGE_FILE)
    return {"location": entries["0/location"], "global": entries["0/global"], "stems": stems}


def _stage_evidence(
    prior: dict, reference: dict, baseline: StagedRun, shuffled: StagedRun, boot: Bootstrap
) -> Evidence:
    """The evidence after one stage: mIoU of the prior and both models, and the
    information evidence of `segaudit.measure.evidence` at the stage's step."""
    base, shuf = baseline.record, shuffled.record
    base_images = baseline.per_image(reference["stems"])
    ev = Evidence(
        prior=prior["metrics"]["miou"],
        majority=prior["prior"]["majority"]["miou"],
        real=base["metrics"]["miou"],
        real_on_noise=base["metrics_by_condition"]["noise"]["miou"],
        shuffled=shuf["metrics"]["miou"],
        step=int(base["step"]),
    )
    found = diagnose_evidence(
        reference["location"],
        reference["global"],
        _by_step(base_images, "real"),
        _by_step(shuffled.per_image(reference["stems"]), "real"),
        _by_step(base_images, "noise"),
        ev.step,
        boot,
    )
    for key, value in found.items():
        setattr(ev, key, value)
    return ev


def _train_side_by_side(
    cfg: DictConfig, command: str, prior: dict, budget: Budget, steps: dict
) -> tuple[Evidence, StagedRun]:
    """Baseline (evaluated on real and noise) and shuffled-pair control, stage by stage,
    until the verdict is decisive or the budget is spent."""
    # Half-way through the first stage (auto) or at a quarter and half of a fixed budget:
    # the first verdict already sees where the curve is going.
    eval_at = [budget.stages[0] // 2] if budget.auto else [budget.schedule // 4, budget.schedule // 2]
    eval_at = sorted(set(eval_at) - {0})
    baseline = StagedRun(_step_cfg(cfg, "baseline", "real", "real", eval_also=["noise"]), command)
    shuffled = StagedRun(_step_cfg(cfg, "shuffled-pairing", "shuffled", "real"), command)
    for run in (baseline, shuffled):
        run.cfg.train.eval_at = sorted({*run.cfg.train.eval_at, *eval_at})
    reference = _reference(prior, cfg)
    boot = Bootstrap(len(reference["stems"]), int(cfg.gate.evidence.draws), float(cfg.gate.evidence.confidence))
    stages = []
    for stop in budget.stages:
        baseline.advance(stop)
        shuffled.advance(stop)
        steps["baseline"], steps["shuffled"] = baseline.record["run_id"], shuffled.record["run_id"]
        ev = _stage_evidence(prior, reference, baseline, shuffled, boot)
        name, reasons = verdict(ev, cfg.gate)
        stages.append({"step": stop, "verdict": name, "reason": reasons[0]})
        console.print(f"[bold]step {stop}[/]: {name} - {reasons[0]}", highlight=False)
        if name in DECISIVE:
            break
    spent = stages[-1]["step"]
    why = (
        f"the evidence decided ({stages[-1]['verdict']})"
        if stages[-1]["verdict"] in DECISIVE
        else "the budget's last stage"
    )
    for run in (baseline, shuffled):
        run.end(why)
    ev.budget = {
        "mode": "auto" if budget.auto else "fixed",
        "schedule": budget.schedule,
        "step": spent,
        "stages": stages,
        "stopped": "decisive" if stages[-1]["verdict"] in DECISIVE else "cap" if budget.auto else "fixed",
    }
    return ev, baseline


def _later_step(cfg: DictConfig, command: str, strategy: str, train_on: str, eval_on: str, stop: int, **extra) -> dict:
    """A step trained after the verdict, under the same schedule and stop as the baseline."""
    run = StagedRun(_step_cfg(cfg, strategy, train_on, eval_on, **extra), command)
    run.advance(stop)
    run.end("the baseline's stop")
    return run.record


def _tier1_step(cfg: DictConfig, command: str, steps: dict, ev: Evidence, stop: int) -> None:
    """Train the tier-1 diagnostic the decision gate compares with the baseline."""
    if not cfg.diagnose.tier1:
        ev.notes.append("tier-1 diagnostic skipped (diagnose.tier1=false)")
        return
    if 1 not in IMPLEMENTED_TIERS:
        ev.notes.append("tier-1 diagnostic skipped: loss tier 1 is not available in this version")
        return
    tier1_cfg = cfg.copy()
    tier1_cfg.choices.loss = "tier1"
    tier1 = _later_step(
        tier1_cfg, command, "tier1", "real", "real", stop, loss=load_group_option("loss", "tier1"), eval_also=["noise"]
    )
    steps["tier1"] = tier1["run_id"]
    ev.tier1 = tier1["metrics"]["miou"]


def _training_pairs(cfg: DictConfig, steps: dict, ev: Evidence) -> None:
    """The share of misaligned training pairs the baseline implies (`training_pairs_test`)."""
    found = training_pairs_test(cfg, steps["baseline"], steps["prior"])
    if found is None:
        why = (
            "diagnose.train_pairs=0"
            if int(cfg.diagnose.train_pairs) <= 0
            else "the baseline does not surely read content yet"
        )
        ev.notes.append(f"training pairs against val pairs: not measured ({why})")
        return
    ev.misaligned = found
    share = found["share"]
    console.print(
        f"training pairs against val pairs ({found['train_images']} of them, "
        f"{found['seconds']:.0f} s): about {Estimate.from_dict(share).percent()} look misaligned",
        highlight=False,
    )


def _pair_scoring(cfg: DictConfig, command: str, steps: dict, ev: Evidence, stop: int) -> None:
    """Run `segaudit suspects` as a step and put its share of flagged training pairs in `ev`."""
    if not cfg.diagnose.suspects:
        ev.notes.append(
            "pair scoring skipped (--no-suspects): broken pairs are not listed, and a partial "
            "fault rests on the training-pairs test alone"
        )
        return
    step_cfg = _step_cfg(cfg, "suspects", "real", "real")
    step_cfg.train.iters = stop  # about one baseline's training over all folds
    found = find_suspects(step_cfg, command)
    steps["suspects"] = found["run_id"]
    train_pairs = found["suspects"]["train"]
    ev.suspect_share, ev.suspect_flagged, ev.suspect_pairs = (
        train_pairs["share"],
        train_pairs["flagged"],
        train_pairs["pairs"],
    )
    ev.suspect_val_share = found["suspects"]["val"]["share"]
    console.print(summary_line(found["suspects"]))


def _classes_block(cfg: DictConfig, split: dict, prior: dict, baseline: dict) -> dict:
    """The baseline's class table (`segaudit.diagnostics.classes`) and its one-line summary."""
    noise = baseline["metrics_by_condition"].get("noise")
    frame = class_rows(
        list(cfg.dataset.class_names),
        split["train_share"],
        split["val_share"],
        prior["metrics"]["iou"],
        baseline["metrics"]["iou"],
        noise["iou"] if noise else None,
        cfg.gate.classes,
    )
    return {"rows": frame.to_dict(orient="records"), "line": content_line(frame, cfg.gate.classes)}


def _cost(root: Path, steps: dict) -> dict:
    """Training seconds of every step (the suspects step counts its fold models), in all
    and over the baseline's own: the diagnose's cost in baseline-training equivalents."""
    seconds = {}
    for name, run_id in steps.items():
        record = runs.read_record(root / run_id)
        folds = record.get("steps", {}).get("folds", []) if name == "suspects" else []
        seconds[name] = (
            sum(runs.read_record(root / f)["timings"]["train_s"] for f in folds)
            if folds
            else record["timings"]["train_s"]
        )
    base = seconds.get("baseline") or 0.0
    return {
        "train_s": sum(seconds.values()),
        "baseline_equivalents": sum(seconds.values()) / base if base > 0 else None,
    }


def larger_crop(dcfg: DictConfig) -> list[int] | None:
    """Twice the training crop, within every training image (the training resize, else
    the smallest height and width among the training labels, read from their headers);
    None without a crop or when it covers the images already."""
    crop = dcfg.transform.get("crop")
    if not crop or crop == "auto":
        return None
    if dcfg.transform.get("resize") is not None:
        size = [int(v) for v in dcfg.transform.resize]
    else:
        sizes = build_dataset(dcfg, "train", train=False).image_sizes()
        size = [min(h for h, _ in sizes), min(w for _, w in sizes)]
    crop = [int(v) for v in crop]
    return [min(2 * c, s) for c, s in zip(crop, size)] if any(c < s for c, s in zip(crop, size)) else None


def diagnose(cfg: DictConfig, command: str = "", plots: Path | None = None) -> dict:
    """Run phase 1 and return the gate record (verdict, decision, evidence, step run ids).

    Steps: data preflight (`segaudit data check`; bad input exits before any training);
    analytic prior; baseline (tier 0, real images, evaluated on real and noise) and the
    shuffled-pairing control, in stages until the verdict is decisive; then at the
    baseline's step: noise training (`diagnose.noise_train`), the tier-1 diagnostic (when
    loss tier 1 exists) and the pair scoring; verdict and decision gate. With `plots`,
    the prior heatmaps, the evidence bars, the learning curves and the baseline's sample
    grid are written there as PNGs.
    """
    cfg = cfg.copy()
    budget = _refuse_early(cfg)
    diagnose_id = (
        str(cfg.run_id)
        if cfg.run_id is not None
        else (f"{dt.datetime.now(dt.timezone.utc):%y%m%d-%H%M%S}-diagnose-{secrets.token_hex(2)}")
    )
    cfg.diagnose_id = diagnose_id
    cfg.run_id = None
    say = console.print

    # a. Preflight: the data check (pairs, decoding, sizes, label ids, alignment), once.
    cfg.dataset = prepare_dataset(cfg.dataset, cfg.paths.cache)
    skipped = preflight(cfg.dataset, skip_bad=bool(cfg.data_check.skip_bad))
    cfg.data_check.before_train = False  # the steps below reuse this check
    if any(skipped.values()):
        say(
            f"[yellow]skipping {sum(map(len, skipped.values()))} bad pair(s):[/] "
            + ", ".join(f"{split}/{stem}" for split, stems in skipped.items() for stem in stems[:5])
        )
    counts = {split: len(list_samples(cfg.dataset, split)) for split in ("train", "val")}
    plan = (
        f"in stages {', '.join(map(str, budget.stages))} until the evidence decides"
        if budget.auto
        else f"{budget.schedule} iters"
    )
    say(
        f"[bold]diagnose {diagnose_id}[/]: {cfg.dataset.name} ({counts['train']} train / "
        f"{counts['val']} val), {cfg.choices.model}/{cfg.model.encoder}, {plan}"
    )
    # b. Analytic prior.
    prior = run_prior(cfg, command)
    say(
        f"analytic prior: mIoU {prior['metrics']['miou']:.2f} "
        f"(global majority {prior['prior']['majority']['miou']:.2f})"
    )
    steps = {"prior": prior["run_id"]}
    split = split_consistency(cfg.dataset, cfg.gate.split)
    if not split["consistent"]:
        say("[yellow]" + "\n".join(consistency_lines(split)) + "[/]")
    # c. Baseline and shuffled-pairing control, side by side, stage by stage.
    ev, baseline = _train_side_by_side(cfg, command, prior, budget, steps)
    stop = ev.budget["step"]
    _training_pairs(cfg, steps, ev)
    # d. Noise training: the investigation's sanity test (the prior predicts its result).
    if cfg.diagnose.noise_train:
        noise = _later_step(cfg, command, "noise-input", "noise", "noise", stop)
        steps["noise"] = noise["run_id"]
        ev.noise_trained = noise["metrics"]["miou"]
    else:
        ev.notes.append("noise training skipped (--no-noise-train); the analytic prior stands in")
    # e. Tier-1 diagnostic for the decision gate.
    _tier1_step(cfg, command, steps, ev, stop)
    # f. Pair scoring: which training pairs look misaligned (cross-fitted models).
    _pair_scoring(cfg, command, steps, ev, stop)
    # g. Verdict and decision gate.
    name, reasons = verdict(ev, cfg.gate)
    decision, why = decide(ev, cfg.gate, name)
    ev.budget.update(_cost(runs.runs_root(cfg), steps))
    for note in ev.notes:
        say(f"[yellow]note:[/] {note}")
    gcfg = cfg.copy()
    gcfg.phase, gcfg.strategy, gcfg.run_id = "gate", "diagnose", diagnose_id
    gcfg.train.iters = stop  # what a later `segaudit suspects --diagnose` cross-fits with
    folder, record = runs.open_run(
        gcfg,
        command,
        model=cfg.choices.model,
        encoder=cfg.model.encoder,
        status="completed",
        metrics=baseline.record["metrics"],
        finished_at=runs.now(),
        verdict=name,
        reasons=reasons,
        evidence=asdict(ev),
        steps=steps,
        split=split,
        classes=_classes_block(cfg, split, prior, baseline.record),
        step=stop,
        iters=budget.schedule,
        gate={
            "preset": cfg.gate.name,
            "rule": cfg.gate.get("rule", "evidence"),
            "decision": decision,
            "why": why,
            "next_checks": NEXT_CHECKS if name == PIPELINE_FAULT else [],
            "next_steps": next_steps(
                ev,
                name,
                cfg.gate,
                pretrained=cfg.model.encoder_weights is not None,
                larger_crop=larger_crop(cfg.dataset),
            ),
        },
    )
    if plots is not None:
        diagnose_plots(cfg, record, prior, Path(plots))  # lists the pictures in the record
    return record_finished(cfg, folder, record)
