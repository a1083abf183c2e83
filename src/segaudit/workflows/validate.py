"""Phase 3: the validation gates every new model passes before anyone trusts its mIoU.

- noise: on pure noise input the model must fail (the same rule as diagnose's
  SPATIAL_SHORTCUT check: `gate.noise_eval_max` and/or `gate.noise_eval_ratio`);
- robustness: a small perturbation (Gaussian noise of sigma 0.05 on the [0, 1] image, and
  corruptions from the `imagecorruptions` package at low severity) keeps the prediction:
  pixel agreement with the clean prediction and the mIoU drop, each against a threshold;
- generalization: |val - test| mIoU within a threshold when a labelled test split exists;
- cross-dataset: the train-on-A / evaluate-on-B matrix over the datasets of the models
  given (and `--cross` datasets); each model's scores must vary across datasets.

Every threshold lives in `conf/gate/*.yaml` under `validate`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from segaudit.core.config import load_group_option
from segaudit.core.devices import amp_dtype, resolve_device
from segaudit.core.errors import ConfigError, DataError
from segaudit.data import build_dataset, eval_loader, prepare_dataset
from segaudit.data.conditions import DeviceImages
from segaudit.measure.evaluation import evaluate, predict_labels
from segaudit.measure.metrics import AgreementMatrix, ConfusionMatrix
from segaudit.models.checkpoints import TrainedModel, load_for_eval
from segaudit.models.inference import Inference, build_inference, inference_record
from segaudit.workflows.audit import measurement_record
from segaudit.workflows.recording import record_finished

GAUSSIAN = "gaussian"


@dataclass
class Gate:
    """One gate's outcome; `passed` is None when the gate could not run (`detail` says why)."""

    name: str
    value: float | None
    threshold: str
    passed: bool | None
    detail: str = ""

    @property
    def result(self) -> str:
        return {True: "PASS", False: "FAIL", None: "SKIP"}[self.passed]


# --------------------------------------------------------------------------- gate logic
def noise_gate(real_miou: float, noise_miou: float, gate: DictConfig) -> Gate:
    """Noise input must fail: below `noise_eval_max` and/or below `noise_eval_ratio` x real."""
    limits = []
    if gate.get("noise_eval_max") is not None:
        limits.append((float(gate.noise_eval_max), f"< {float(gate.noise_eval_max):.1f}"))
    if gate.get("noise_eval_ratio") is not None:
        ratio = float(gate.noise_eval_ratio)
        limits.append((ratio * real_miou, f"< {ratio:g} x real = {ratio * real_miou:.1f}"))
    if not limits:
        return Gate(
            "noise input fails", noise_miou, "-", None, "gate.noise_eval_max and gate.noise_eval_ratio are both null"
        )
    passed = all(noise_miou < limit for limit, _ in limits)
    return Gate("noise input fails", noise_miou, ", ".join(text for _, text in limits), passed, "mIoU on uniform noise")


def robustness_gates(clean_miou: float, perturbed: dict[str, dict], rcfg: DictConfig) -> list[Gate]:
    """One gate per perturbation: agreement >= min_agreement and drop <= max_miou_drop.

    Args:
        clean_miou: mIoU on the clean images the perturbations were applied to.
        perturbed: perturbation name -> metrics with "miou" and "agreement" (percent).
        rcfg: `gate.validate.robustness`.
    """
    gates = []
    for name, result in perturbed.items():
        drop = clean_miou - result["miou"]
        passed = result["agreement"] >= float(rcfg.min_agreement) and drop <= float(rcfg.max_miou_drop)
        gates.append(
            Gate(
                f"robust: {name}",
                result["agreement"],
                f"agree>={float(rcfg.min_agreement):g}% drop<={float(rcfg.max_miou_drop):g}",
                passed,
                f"mIoU drop {drop:+.2f}",
            )
        )
    return gates


def generalization_gate(val_miou: float, test_miou: float | None, max_gap: float, skipped_because: str = "") -> Gate:
    """|val - test| <= max_gap; skipped (with the reason) without a labelled test split."""
    threshold = f"|val - test| <= {max_gap:.1f}"
    if test_miou is None:
        return Gate("generalization", None, threshold, None, skipped_because)
    gap = abs(val_miou - test_miou)
    return Gate("generalization", gap, threshold, gap <= max_gap, f"val {val_miou:.2f}, test {test_miou:.2f}")


def cross_dataset_gate(row: pd.Series, spread_min: float) -> Gate:
    """A model's mIoU across evaluation datasets must vary: sample std (ddof=1) > spread_min."""
    scores = row.dropna()
    threshold = f"std > {spread_min:.1f}"
    if len(scores) < 2:
        return Gate(
            "cross-dataset",
            None,
            threshold,
            None,
            "one dataset with these classes: validate runs of other datasets too, or add --cross PRESET=ROOT",
        )
    spread = float(scores.std(ddof=1))
    detail = ", ".join(f"{name} {value:.1f}" for name, value in scores.items())
    return Gate("cross-dataset", spread, threshold, spread > spread_min, detail)


# --------------------------------------------------------------------------- measuring
def corrupt_batch(images: torch.Tensor, name: str, severity: int, mean, std, seed: int) -> torch.Tensor:
    """Apply an `imagecorruptions` corruption to each normalised image of a batch.

    The package works on uint8 HxWx3 arrays and draws from numpy's global RNG; it is
    seeded per batch for repeatable audits and the caller's RNG state is restored.
    """
    from imagecorruptions import corrupt

    height, width = images.shape[-2:]
    if height < 32 or width < 32:
        raise DataError(
            f"imagecorruptions needs images of at least 32x32 pixels, these are "
            f"{width}x{height}: run without them, "
            f"gate.validate.robustness.corruptions=[]"
        )
    mean_t = torch.tensor(list(mean)).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std)).view(1, -1, 1, 1)
    raw = ((images.float().cpu() * std_t + mean_t).clamp(0, 1) * 255).round().to(torch.uint8)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        out = [
            corrupt(np.ascontiguousarray(img.permute(1, 2, 0).numpy()), corruption_name=name, severity=severity)
            for img in raw
        ]
    finally:
        np.random.set_state(state)
    corrupted = torch.stack([torch.from_numpy(np.array(o, dtype=np.uint8)) for o in out])
    corrupted = corrupted.permute(0, 3, 1, 2).float() / 255.0
    return ((corrupted - mean_t) / std_t).to(images.device, images.dtype)


def perturbations(rcfg: DictConfig) -> list[tuple[str, str, float]]:
    """(label, kind, strength) of every perturbation in `gate.validate.robustness`."""
    from imagecorruptions import get_corruption_names

    known = get_corruption_names("all")
    unknown = [c for c in rcfg.corruptions or [] if c not in known]
    if unknown:
        raise ConfigError(
            f"gate.validate.robustness.corruptions: unknown {', '.join(unknown)} "
            f"(imagecorruptions has: {', '.join(known)})"
        )
    bad = [s for s in rcfg.severities or [] if int(s) not in range(1, 6)]
    if bad:
        raise ConfigError(f"gate.validate.robustness.severities: {bad} outside 1..5")
    found = []
    if rcfg.gaussian_sigma:
        found.append((f"gaussian sigma={float(rcfg.gaussian_sigma):g}", GAUSSIAN, float(rcfg.gaussian_sigma)))
    for name in rcfg.corruptions or []:
        for severity in rcfg.severities or []:
            found.append((f"{name} s{int(severity)}", str(name), int(severity)))
    return found


def _loader(dcfg: DictConfig, split: str, batch_size: int) -> torch.utils.data.DataLoader:
    return eval_loader(build_dataset(dcfg, split, train=False), batch_size)


def score(model, dcfg: DictConfig, split: str, device, dtype, batch_size: int, infer: Inference | None = None) -> dict:
    """Plain metrics of `model` on one split of `dcfg`."""
    return evaluate(
        model,
        _loader(dcfg, split, batch_size),
        int(dcfg.num_classes),
        int(dcfg.ignore_index),
        device,
        dtype,
        infer=infer,
    )


@torch.inference_mode()
def measure_val(
    model, dcfg: DictConfig, vcfg: DictConfig, device, dtype, batch_size: int, seed: int, infer: Inference | None = None
) -> dict:
    """One pass over the val split: clean, noise, and every robustness perturbation.

    Returns:
        {"real": metrics, "noise": metrics, "perturbed": {label: metrics + agreement},
         "robust_real": clean metrics on the robustness subset}.
    """
    num_classes, ignore_index = int(dcfg.num_classes), int(dcfg.ignore_index)
    mean, std = dcfg.transform.mean, dcfg.transform.std
    noise = DeviceImages(load_group_option("condition", "noise"), mean, std, device, seeded=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    rcfg = vcfg.robustness
    limit = rcfg.get("max_images")
    plan = perturbations(rcfg)
    real, robust_real = ConfusionMatrix(num_classes, ignore_index), ConfusionMatrix(num_classes, ignore_index)
    noisy = AgreementMatrix(num_classes, ignore_index)
    perturbed = {label: AgreementMatrix(num_classes, ignore_index) for label, _, _ in plan}
    seen = 0
    std_t = torch.tensor(list(std), device=device).view(1, -1, 1, 1)
    for batch_index, (images, target) in enumerate(_loader(dcfg, "val", batch_size)):
        images, target = images.to(device), target.to(device)
        clean = predict_labels(model, images, device, dtype, infer=infer)
        real.update(clean, target)
        noisy.update(predict_labels(model, noise(images), device, dtype, infer=infer), target, clean)
        if limit is not None and seen >= int(limit):
            continue
        keep = images.shape[0] if limit is None else min(images.shape[0], int(limit) - seen)
        seen += keep
        images, target, clean = images[:keep], target[:keep], clean[:keep]
        robust_real.update(clean, target)
        for label, kind, strength in plan:
            if kind == GAUSSIAN:  # sigma is on the [0, 1] image, so divide by the normalising std
                shifted = images + torch.randn(images.shape, device=device, generator=generator) * (strength / std_t)
            else:
                shifted = corrupt_batch(images, kind, int(strength), mean, std, seed + batch_index)
            perturbed[label].update(predict_labels(model, shifted, device, dtype, infer=infer), target, clean)
    return {
        "real": real.compute(),
        "noise": noisy.compute(),
        "robust_real": robust_real.compute(),
        "perturbed": {label: s.compute() for label, s in perturbed.items()},
    }


def score_split(
    model, dcfg: DictConfig, split: str, device, dtype, batch_size: int, infer: Inference | None = None
) -> tuple[dict | None, str]:
    """Metrics on a labelled `split` (e.g. test), or None and the reason there are none:
    the layout has no such split, its mask folder is missing, or no pixel is labelled."""
    if split not in dcfg.layout or dcfg.layout[split] is None:
        return None, f"dataset.layout has no '{split}' split"
    folder = Path(dcfg.root) / dcfg.layout[split].masks
    if not folder.is_dir():
        return None, f"no labelled {split} split ({folder} does not exist)"
    metrics = score(model, dcfg, split, device, dtype, batch_size, infer)
    if math.isnan(metrics["aacc"]):
        return None, f"the {split} masks hold no labelled pixels"
    return metrics, ""


# --------------------------------------------------------------------------- datasets
def _same_classes(a: DictConfig, b: DictConfig) -> bool:
    names = lambda d: [str(n).strip().lower() for n in d.class_names]  # noqa: E731
    return int(a.num_classes) == int(b.num_classes) and names(a) == names(b)


def cross_dataset_config(spec: str, cfg: DictConfig) -> DictConfig:
    """`PRESET[=ROOT]` or `FILE.yaml[=ROOT]` (a dataset config, e.g. a preset with a
    label_map that maps its ids into your model's classes) to a prepared dataset config."""
    name, _, root = spec.partition("=")
    path = Path(name).expanduser()
    if name.endswith((".yaml", ".yml")):
        if not path.is_file():
            raise ConfigError(f"--cross {spec}: {path} not found")
        dcfg = OmegaConf.load(path)
    else:
        try:
            dcfg = load_group_option("dataset", name)
        except ConfigError as err:
            raise ConfigError(f"--cross {spec}: {err}") from None
    if root:
        with open_dict(dcfg):
            dcfg.root = root
    return prepare_dataset(dcfg, cfg.paths.cache)


def _dataset_key(dcfg: DictConfig) -> str:
    return f"{dcfg.name}:{Path(str(dcfg.root)).resolve()}"


def _label_datasets(configs: list[DictConfig]) -> dict[str, DictConfig]:
    """Distinct datasets (by name and root) under short labels: the name, or name:folder
    when two datasets share a name."""
    unique: dict[str, DictConfig] = {}
    for dcfg in configs:
        unique.setdefault(_dataset_key(dcfg), dcfg)
    names = [d.name for d in unique.values()]
    return {(d.name if names.count(d.name) == 1 else f"{d.name}:{Path(str(d.root)).name}"): d for d in unique.values()}


def _for_model(dcfg: DictConfig, trained_on: DictConfig) -> DictConfig:
    """Dataset B seen through model A's input normalisation."""
    dcfg = dcfg.copy()
    with open_dict(dcfg):
        dcfg.transform.mean = list(trained_on.transform.mean)
        dcfg.transform.std = list(trained_on.transform.std)
    return dcfg


# --------------------------------------------------------------------------- the command
def _refuse_other_dataset(cfg: DictConfig, loaded: list[TrainedModel]) -> None:
    """A `dataset.root` on the command line that is not the models' own is refused; the
    training overrides repeated without a root (the usual habit) are fine."""
    if OmegaConf.is_missing(cfg.dataset, "root") or cfg.dataset.root is None:
        return
    given = prepare_dataset(cfg.dataset, cfg.paths.cache)
    for item in loaded:
        own = item.saved.dataset
        if (given.name, str(given.root)) != (own.name, str(own.root)):
            raise ConfigError(
                f"dataset={given.name} ({given.root}): validate measures "
                f"{item.source_run or item.ckpt_path} on the dataset it was trained on "
                f"({own.name}); give other datasets with --cross PRESET=ROOT"
            )


def validate(
    cfg: DictConfig, targets: list[str], cross: list[str] | None = None, command: str = "", dataset_given: bool = False
) -> dict:
    """`segaudit validate`: run the phase-3 gates on each checkpoint, record each as a run.

    Args:
        cfg: the composed config (`gate.validate` holds the thresholds).
        targets: run ids under `paths.runs` (a diagnose id stands for its baseline) or
            checkpoint files; a model named twice is validated once.
        cross: extra evaluation datasets for the cross-dataset matrix (`PRESET[=ROOT]` or
            `FILE.yaml[=ROOT]`).
        dataset_given: the command line set `dataset...`; each model is measured on the
            dataset it was trained on, so another one is refused (it belongs in `cross`).

    Returns:
        {"records": one `phase=validate` record per target, "matrix": the cross-dataset
        mIoU matrix (rows: validated runs, columns: datasets) as a dict, "passed": True
        when no gate failed anywhere}.
    """
    if not targets:
        raise ConfigError("validate: give at least one RUN_ID or checkpoint file")
    t0 = time.perf_counter()
    vcfg = cfg.gate.validate
    perturbations(vcfg.robustness)  # bad corruption names fail before any work
    device = resolve_device(str(cfg.device))
    dtype = amp_dtype(str(cfg.train.amp), device)
    batch_size = int(cfg.train.eval_batch_size)
    loaded, seen = [], set()
    for target in targets:  # a diagnose id and its baseline's run id are one model
        item = load_for_eval(cfg, target, device)
        if item.ckpt_path.resolve() not in seen:
            seen.add(item.ckpt_path.resolve())
            loaded.append(item)
    if dataset_given:
        _refuse_other_dataset(cfg, loaded)
    extra = [cross_dataset_config(spec, cfg) for spec in cross or []]

    datasets = _label_datasets([item.saved.dataset for item in loaded] + extra)

    results = []
    for item in loaded:
        dcfg = item.saved.dataset
        if not Path(str(dcfg.root)).is_dir():
            raise DataError(f"{item.ckpt_path}: its dataset.root {dcfg.root} is not a folder any more")
        infer = build_inference(item.model, dcfg, cfg.get("inference"))
        measured = measure_val(item.model, dcfg, vcfg, device, dtype, batch_size, int(cfg.seed), infer)
        measured["inference"] = inference_record(infer)
        test, why_not = score_split(item.model, dcfg, str(vcfg.generalization.split), device, dtype, batch_size, infer)
        row = {}
        for key, other in datasets.items():
            if _dataset_key(other) == _dataset_key(dcfg):
                row[key] = measured["real"]["miou"]
            elif _same_classes(dcfg, other):
                other_view = _for_model(other, dcfg)
                row[key] = score(
                    item.model,
                    other_view,
                    "val",
                    device,
                    dtype,
                    batch_size,
                    build_inference(item.model, other_view, cfg.get("inference")),
                )["miou"]
            else:
                row[key] = float("nan")
        results.append((item, measured, test, why_not, row))

    index = [r[0].source_run or str(r[0].ckpt_path) for r in results]
    matrix = pd.DataFrame([r[4] for r in results], index=index, columns=list(datasets), dtype=float)
    records = []
    for (item, measured, test, why_not, _), name in zip(results, index):
        real = measured["real"]["miou"]
        gates = [noise_gate(real, measured["noise"]["miou"], cfg.gate)]
        gates += robustness_gates(measured["robust_real"]["miou"], measured["perturbed"], vcfg.robustness)
        gates.append(
            generalization_gate(
                real, None if test is None else test["miou"], float(vcfg.generalization.max_gap), why_not
            )
        )
        gates.append(cross_dataset_gate(matrix.loc[name], float(vcfg.cross_dataset.spread_min)))
        run_id = str(cfg.run_id) if cfg.run_id is not None and len(loaded) == 1 else None
        records.append(
            _write_record(
                cfg, item, measured, test, gates, matrix.loc[name], command, device, run_id, time.perf_counter() - t0
            )
        )
    passed = all(g["passed"] is not False for r in records for g in r["validate"]["gates"])
    return {"records": records, "matrix": matrix.to_dict(orient="index"), "passed": passed}


def _write_record(
    cfg: DictConfig,
    item: TrainedModel,
    measured: dict,
    test: dict | None,
    gates: list[Gate],
    cross_row: pd.Series,
    command: str,
    device: torch.device,
    run_id: str | None,
    seconds: float,
) -> dict:
    by_condition = {"real": measured["real"], "noise": measured["noise"]}
    block = {
        "source": str(item.ckpt_path),
        "source_run": item.source_run,
        "gates": [asdict(g) | {"result": g.result} for g in gates],
        "passed": all(g.passed is not False for g in gates),
        "robustness": {"clean": measured["robust_real"], **measured["perturbed"]},
        "test": test,
        "cross_dataset": {k: (None if pd.isna(v) else float(v)) for k, v in cross_row.items()},
        "gate_preset": cfg.gate.name,
        "inference": measured["inference"],
    }
    passed_of_run = f"{sum(g.passed is True for g in gates)}/{sum(g.passed is not None for g in gates)}"
    folder, record = measurement_record(
        cfg, item, "validate", command, by_condition, device, run_id, gates=passed_of_run, validate=block
    )
    return record_finished(cfg, folder, record, seconds)
