"""Pair forensics: which image/mask pairs are misaligned or mismatched.

A renaming or sort-order bug breaks some pairs, not all, and a model trained on the rest
still reads images, so the verdict alone can say HEALTHY. Here every pair is scored by a
model that never trained on it (cross-fitting, as confident learning does): the training
split is cut into `suspects.folds` folds, one model is trained per fold on all the other
folds, and each predicts its held-out fold; the val pairs are predicted by the first
fold's model. A pair's score is how well its mask fits the prediction on its own image
(percent of labelled pixels) minus how well it fits the analytic prior map: a healthy
pair fits its image better than the label-only prior, and a mask that belongs to another
scene fits the prior (where classes usually sit) better than this image's content. Pairs
scoring below `suspects.flag_below` are flagged.

For a flagged mask the image whose prediction it fits best is named when it stands out
(`suspects.match_margin` points above its own image and the runner-up), which catches
swapped pairs: "mask of 0173 fits image 0412". Masks and predictions are compared on
small thumbnails (at most `THUMB_PIXELS` pixels) so that this stays cheap at 1024x2048.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, open_dict
from torch.utils.data import DataLoader, Dataset, Subset

from segaudit import runs
from segaudit.core.config import load_group_option
from segaudit.core.devices import amp_dtype, resolve_device
from segaudit.core.errors import ConfigError
from segaudit.data import build_dataset, eval_loader, list_samples
from segaudit.data.sampler import size_grouped_batches
from segaudit.measure.evaluation import evaluate, predict_labels
from segaudit.measure.evidence import Bootstrap, misaligned_share, reads_content
from segaudit.measure.information import PER_IMAGE_FILE, ImageScores, PerImage, load_per_image
from segaudit.measure.prior import PRIOR_FILE, analytic_prior, leave_one_out_scores, prior_map
from segaudit.models.checkpoints import load_for_eval
from segaudit.models.inference import build_inference
from segaudit.train.engine import check_train_settings, train

SUSPECTS_FILE = "suspects.json"
THUMB_PIXELS = 4096  # masks and predictions are matched on grids of at most this many pixels


@dataclass
class PairScore:
    """One image/mask pair's fit (percent of labelled pixels)."""

    stem: str
    split: str
    score: float  # own_fit - prior_fit: below `flag_below` is suspect
    own_fit: float  # mask vs the prediction on its own image
    prior_fit: float  # mask vs the analytic prior map
    flagged: bool
    best_match: str | None = None  # the image this mask fits best, when one stands out
    best_fit: float | None = None  # mask vs the prediction on that image
    fold: int | None = None  # the fold model that predicted it (val: the first)


def fold_stems(stems: list[str], folds: int, seed: int) -> list[list[str]]:
    """Cut stems into `folds` disjoint folds of near-equal size, shuffled by `seed`."""
    order = np.random.default_rng(seed).permutation(len(stems))
    return [sorted(stems[i] for i in order[k::folds]) for k in range(folds)]


class _Indexed(Dataset):
    """A dataset's samples with their position, so batches grouped by size keep their stems."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, mask = self.dataset[index]
        return image, mask, index


def _fit(pred: torch.Tensor, target: torch.Tensor, ignore_index: int) -> float:
    """Percent of labelled pixels where `pred` equals `target` (NaN with none labelled)."""
    labelled = target != ignore_index
    count = int(labelled.sum())
    return 100.0 * int(((pred == target) & labelled).sum()) / count if count else math.nan


def _resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of N x H x W class ids."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()


def thumb_size(size: tuple[int, int]) -> tuple[int, int]:
    """The matching grid for label maps of `size`: the same aspect, at most THUMB_PIXELS."""
    scale = min(1.0, math.sqrt(THUMB_PIXELS / (size[0] * size[1])))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


@torch.inference_mode()
def score_pairs(
    model: torch.nn.Module,
    dcfg: DictConfig,
    split: str,
    stems: list[str],
    prior: torch.Tensor,
    cfg: DictConfig,
    device: torch.device,
    fold: int,
) -> tuple[list[PairScore], torch.Tensor, torch.Tensor]:
    """Score the pairs `stems` of `split` with `model` (which never trained on them).

    Returns:
        The scores (not yet flagged), and the predictions and masks as thumbnails
        (N x h x w, in the order of the scores) for matching masks to other images.
    """
    keep = set(stems)
    part = dcfg.copy()
    with open_dict(part):
        others = [s.stem for s in list_samples(dcfg, split) if s.stem not in keep]
        part.exclude = {
            **(dcfg.get("exclude") or {}),
            split: [*((dcfg.get("exclude") or {}).get(split) or []), *others],
        }
    dataset = build_dataset(part, split, train=False)
    names = [s.stem for s in list_samples(part, split)]
    batches = size_grouped_batches(dataset.image_sizes(), int(cfg.train.eval_batch_size))
    loader = DataLoader(_Indexed(dataset), batch_sampler=batches)
    infer = build_inference(model, dcfg, cfg.get("inference"))
    dtype = amp_dtype(str(cfg.train.amp), device)
    ignore_index = int(dcfg.ignore_index)
    grid = thumb_size(tuple(prior.shape))
    scores, preds, masks = [], [], []
    for images, target, index in loader:
        pred = predict_labels(model, images.to(device), device, dtype, target.shape[-2:], infer).cpu()
        prior_pred = _resize_labels(prior[None], tuple(target.shape[-2:]))[0]
        for i, position in enumerate(index.tolist()):
            own, at_prior = _fit(pred[i], target[i], ignore_index), _fit(prior_pred, target[i], ignore_index)
            scores.append(PairScore(names[position], split, own - at_prior, own, at_prior, False, fold=fold))
        preds.append(_resize_labels(pred, grid))
        masks.append(_resize_labels(target.long(), grid))
    return scores, torch.cat(preds), torch.cat(masks)


def best_matches(
    scores: list[PairScore], preds: torch.Tensor, masks: torch.Tensor, ignore_index: int, margin: float
) -> None:
    """Name, for each flagged pair, the image whose prediction its mask fits best, when that
    image stands out by `margin` points over its own image and over the runner-up."""
    labelled = masks != ignore_index
    counts = labelled.flatten(1).sum(1).clamp(min=1)
    for i, pair in enumerate(scores):
        if not pair.flagged:
            continue
        fits = 100.0 * ((preds == masks[i]) & labelled[i]).flatten(1).sum(1) / counts[i]
        own = float(fits[i])
        fits[i] = -1.0
        top = torch.topk(fits, k=min(2, len(fits)))
        best = float(top.values[0])
        runner_up = float(top.values[1]) if len(top.values) > 1 else -1.0
        if best - own >= margin and best - runner_up >= margin:
            pair.best_match, pair.best_fit = scores[int(top.indices[0])].stem, best


def _fold_cfg(cfg: DictConfig, fold: int, folds: int, held_out: list[str]) -> DictConfig:
    """The config of one cross-fitting model: trained on every training pair but `held_out`."""
    step = cfg.copy()
    step.phase, step.strategy, step.run_id = "suspects", f"crossfit-{fold + 1}of{folds}", None
    step.train_condition = load_group_option("condition", "real")
    step.eval_condition = load_group_option("condition", "real")
    step.eval_also = []
    step.data_check.before_train = False  # checked once, before the first fold
    step.train.iters = fold_iters(cfg)
    step.train.eval_at = []  # the final evaluation is enough: these models only score pairs
    with open_dict(step):
        excluded = dict(step.dataset.get("exclude") or {})
        excluded["train"] = [*(excluded.get("train") or []), *held_out]
        step.dataset.exclude = excluded
    return step


def fold_iters(cfg: DictConfig) -> int:
    """Steps per fold model: `suspects.iters`, else train.iters / folds, so that scoring
    every pair costs about one baseline training whatever the number of folds."""
    if cfg.suspects.iters is not None:
        return int(cfg.suspects.iters)
    return max(1, int(cfg.train.iters) // int(cfg.suspects.folds))


def check_suspects_settings(cfg: DictConfig) -> None:
    """Refuse bad `suspects.*` values before anything is trained or written."""
    rules = cfg.suspects
    if not isinstance(rules.folds, int) or isinstance(rules.folds, bool) or rules.folds < 2:
        raise ConfigError(
            f"suspects.folds={rules.folds!r}: need a whole number >= 2 (each pair is "
            f"scored by a model trained on the other folds)"
        )
    if rules.iters is not None and (not isinstance(rules.iters, int) or rules.iters < 1):
        raise ConfigError(f"suspects.iters={rules.iters!r}: need a whole number >= 1, or null for train.iters")
    check_train_settings(cfg)


def cross_fit(cfg: DictConfig, command: str) -> tuple[list[PairScore], dict]:
    """Train one model per fold and score every train and val pair; flag and match them.

    `cfg.dataset` must be prepared and checked. Returns the scores and the fold run ids.
    """
    rules = cfg.suspects
    dcfg = cfg.dataset
    stems = [s.stem for s in list_samples(dcfg, "train")]
    folds = fold_stems(stems, int(rules.folds), int(cfg.seed))
    prior = prior_map(analytic_prior(dcfg).counts)
    device = resolve_device(str(cfg.device))
    scores, preds, masks, fold_runs = [], [], [], []
    for k, held_out in enumerate(folds):
        record = train(_fold_cfg(cfg, k, len(folds), held_out), command)
        fold_runs.append(record["run_id"])
        model = load_for_eval(cfg, record["run_id"], device).model
        parts = [("train", held_out)] + ([("val", [s.stem for s in list_samples(dcfg, "val")])] if k == 0 else [])
        for split, part in parts:
            found, p, m = score_pairs(model, dcfg, split, part, prior, cfg, device, k)
            scores += found
            preds.append(p)
            masks.append(m)
    for pair in scores:
        pair.flagged = bool(pair.score < float(rules.flag_below))
    best_matches(scores, torch.cat(preds), torch.cat(masks), int(dcfg.ignore_index), float(rules.match_margin))
    return scores, {"folds": fold_runs}


def summarize_pairs(scores: list[PairScore]) -> dict:
    """Counts and shares (percent) of flagged pairs per split."""
    out = {}
    for split in ("train", "val"):
        part = [s for s in scores if s.split == split]
        flagged = sum(s.flagged for s in part)
        out[split] = {"pairs": len(part), "flagged": flagged, "share": 100.0 * flagged / len(part) if part else 0.0}
    return out


def summary_line(summary: dict) -> str:
    """'N of M training pairs look misaligned (x%)', and the val count."""
    train, val = summary["train"], summary["val"]
    line = (
        f"{train['flagged']} of {train['pairs']} training pairs look misaligned ({train['share']:.1f}%); "
        f"{val['flagged']} of {val['pairs']} val pairs"
    )
    if val["share"] > 50:  # val pairs are scored by a model that trained on clean-or-not train pairs
        line += (
            " - most val pairs fit the prior as well as their images: the fold models learned "
            "little (raise suspects.iters), or val is broken too"
        )
    return line


def read_pairs(root: Path, run_id: str) -> list[dict]:
    """The pair scores of a suspects run (flagged first, lowest score first)."""
    path = root / runs.check_run_id(run_id) / SUSPECTS_FILE
    try:
        pairs = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no pair scores (is {run_id} a suspects run?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable pair scores ({err})") from None
    if not isinstance(pairs, list) or not all(isinstance(p, dict) and "stem" in p for p in pairs):
        raise ConfigError(f"{path}: not a list of pair scores")
    return pairs


def too_many_flagged(record: dict, gate: DictConfig) -> bool:
    """More than `gate.suspects_max_share` percent of the training pairs are flagged beyond
    the share of val pairs flagged (the same models' rate on pairs that trained nothing)."""
    summary = record["suspects"]
    return summary["train"]["share"] - summary["val"]["share"] > float(gate.suspects_max_share)


def _rows(scores: PerImage, rows: np.ndarray) -> PerImage:
    return PerImage(**{name: getattr(scores, name)[rows] for name in ("nll", "pixels", "tp", "gt", "pred")})


@torch.inference_mode()
def _image_scores(
    model: torch.nn.Module, dataset: Dataset, positions: np.ndarray, cfg: DictConfig, device: torch.device
) -> PerImage:
    """`model`'s per-image scores on `dataset`'s images at `positions`, in that order."""
    dcfg = cfg.dataset
    k, ignore = int(dcfg.num_classes), int(dcfg.ignore_index)
    scores = ImageScores(k, ignore, len(dataset))
    loader = eval_loader(Subset(dataset, positions.tolist()), int(cfg.train.eval_batch_size))
    evaluate(
        model,
        loader,
        k,
        ignore,
        device,
        amp_dtype(str(cfg.train.amp), device),
        infer=build_inference(model, dcfg, cfg.get("inference")),
        scores=scores,
    )
    return _rows(scores.compute(), positions)


def training_pairs_test(cfg: DictConfig, model_run: str, prior_run: str) -> dict | None:
    """The share of training pairs that look misaligned to the model of `model_run`, which
    trained on them (`segaudit.measure.evidence.misaligned_share`), from its val scores at its
    last evaluation, its scores on up to `diagnose.train_pairs` training pairs (a seeded
    sample) and on the val masks fed other images' pixels, against the prior of
    `prior_run`. None when `diagnose.train_pairs` is 0 or the model does not surely read
    content (val pairs over other-image inputs by `gate.evidence.min_content_bits`).

    Unlike the cross-fitted pair scoring it trains nothing, so it works at any budget
    at which the model has learned some content; it estimates how many pairs are broken,
    not which.
    """
    limit = int(cfg.diagnose.train_pairs)
    if limit <= 0:
        return None
    t0 = time.perf_counter()
    root, dcfg = runs.runs_root(cfg), cfg.dataset
    device = resolve_device(str(cfg.device))
    trained = load_for_eval(cfg, model_run, device)
    val_prior, val_stems = load_per_image(root / prior_run / PER_IMAGE_FILE)
    own, stems = load_per_image(root / model_run / PER_IMAGE_FILE)
    if stems != val_stems:
        raise ConfigError(f"run {model_run}: its val images differ from the prior's (the dataset changed?)")
    others = build_dataset(dcfg, "val", train=False, condition=load_group_option("condition", "shuffled"))
    val_other = _image_scores(trained.model, others, np.arange(len(others)), cfg, device)
    val, val_location = own[f"{trained.step}/real"], val_prior["0/location"]
    draws, level = int(cfg.gate.evidence.draws), float(cfg.gate.evidence.confidence)
    val_boot, min_reads = Bootstrap(len(val_stems), draws, level), float(cfg.gate.evidence.min_content_bits)
    if not reads_content(val, val_location, val_other, val_boot, min_reads):
        return None  # before the training pairs' pass: at 1024x2048 it is the expensive one
    samples = list_samples(dcfg, "train")
    picked = np.sort(np.random.default_rng(int(cfg.seed)).permutation(len(samples))[:limit])
    train = _image_scores(trained.model, build_dataset(dcfg, "train", train=False), picked, cfg, device)
    saved = torch.load(root / prior_run / PRIOR_FILE, weights_only=True)
    pseudo_count = float(runs.read_record(root / prior_run)["prior"]["pseudo_count"])
    train_prior = leave_one_out_scores(dcfg, saved["counts"], pseudo_count, [samples[i].mask for i in picked])
    found = misaligned_share(
        train,
        train_prior,
        val,
        val_location,
        val_other,
        Bootstrap(len(train), draws, level, seed=1),
        val_boot,
        min_reads=min_reads,
    )
    if found is not None:  # two inference passes: the sampled training pairs, the val set
        found["seconds"] = round(time.perf_counter() - t0, 2)
    return found
