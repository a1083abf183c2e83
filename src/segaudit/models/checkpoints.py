"""Checkpoints: safe loading (`weights_only=True`), atomic saving, starting weights, and
the trained models that audit, validate and the pictures measure.

A checkpoint holds model, optimizer, scheduler, step, RNG state and the resolved
config; the model is rebuilt from that config and its weights loaded strictly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import nn

from segaudit import runs
from segaudit.core.config import check_targets
from segaudit.core.datafiles import check_plain
from segaudit.core.errors import ConfigError, first_line
from segaudit.data import list_samples, prepare_dataset
from segaudit.models.build import build_model
from segaudit.models.sources import (
    CardAdapter,
    ModelCard,
    OnnxModel,
    card_from_mapping,
    check_output_channels,
    hf_card,
    is_hf_dir,
    is_smp_dir,
    is_torchscript,
    load_external,
    load_weights_only,
    read_card,
    read_card_file,
)


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely (`weights_only=True`); a clear error if it is damaged."""
    try:
        return load_weights_only(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: checkpoint not found") from None
    except Exception as err:
        if "Weights only load failed" in str(err):
            raise ConfigError(
                f"{path}: holds pickled Python objects (a whole model saved with torch.save(model), "
                f"or a custom class), which segaudit never unpickles because loading them runs "
                f"code; save model.state_dict() instead"
            ) from None
        raise ConfigError(f"{path}: unreadable checkpoint ({first_line(err)})") from None


def save_checkpoint(path: Path, state: dict) -> None:
    runs.atomic_write(path, lambda fh: torch.save(state, fh), binary=True)


def init_weights(model: nn.Module, path: Path) -> None:
    """Start from a trained checkpoint's segmentation weights (heads of tiers 2/3 stay new)."""
    state = load_checkpoint(path).get("model")
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: not a segaudit checkpoint (no 'model' weights)")
    if any(k.startswith("net.") for k in state):  # saved from a tier-2/3 model: drop its heads
        state = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
    target = getattr(model, "net", model)
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"{path}: weights do not fit this model ({first_line(err)})") from None


def resolve_checkpoint(runs_root: Path, target: str) -> tuple[Path, str | None]:
    """A checkpoint path, or a run id under `runs_root`, to (checkpoint file, run id or None).

    A diagnose id stands for the baseline model that diagnose trained.
    """
    path = Path(target).expanduser()
    if path.is_file():
        return path, None
    run_dir = Path(runs_root).expanduser() / target
    if (run_dir / runs.CHECKPOINT).is_file():
        return run_dir / runs.CHECKPOINT, target
    if (run_dir / runs.RECORD).is_file():
        baseline = (runs.read_record(run_dir).get("steps") or {}).get("baseline")
        if baseline and (run_dir.parent / baseline / runs.CHECKPOINT).is_file():
            return run_dir.parent / baseline / runs.CHECKPOINT, baseline
    raise ConfigError(f"{target}: neither a checkpoint file nor a run id with a checkpoint under {runs_root}")


def load_trained_model(ckpt: dict, source: Path) -> tuple[torch.nn.Module, DictConfig]:
    """Rebuild the model a checkpoint was trained with and load its weights."""
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ConfigError(f"{source}: not a segaudit checkpoint (needs 'model' and 'config')")
    check_plain(ckpt["config"], f"{source} (its saved config)")
    try:
        saved = OmegaConf.create(ckpt["config"])
    except Exception as err:  # noqa: BLE001 - OmegaConf raises several types for bad input
        raise ConfigError(f"{source}: unreadable config in checkpoint ({first_line(err)})") from None
    check_targets(saved, f"{source} (its saved config)")
    model = build_model(saved.model, int(saved.dataset.num_classes), tiers=saved.loss.get("tiers", [0]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise ConfigError(
            f"{source}: weights do not fit {saved.choices.model}/{saved.model.encoder} ({first_line(err)})"
        ) from None
    return model, saved


@dataclass
class TrainedModel:
    """A checkpoint loaded for measuring: the model on its device, in eval mode."""

    ckpt_path: Path
    source_run: str | None  # the run it came from (None for a bare checkpoint file)
    step: int
    model: torch.nn.Module | None  # None: a predictions-only audit (`segaudit.workflows.predictions`)
    saved: DictConfig  # the config it was trained with


def load_for_eval(cfg: DictConfig, target: str, device: torch.device) -> TrainedModel:
    """A run id (a diagnose id: its baseline), a segaudit checkpoint, or an external model
    (`segaudit.models.sources`: an smp folder, weights with `source.factory`, TorchScript or
    `.pt2` with `source.trust`), loaded onto `device` in eval mode."""
    path = Path(target).expanduser()
    if cfg.source.factory or is_external(path):
        return load_external_for_eval(cfg, path, device)
    ckpt_path, source_run = resolve_checkpoint(runs.runs_root(cfg), target)
    ckpt = load_checkpoint(ckpt_path)
    if isinstance(ckpt, dict) and "config" not in ckpt:  # weights alone: say what they need
        load_external(ckpt_path, None, bool(cfg.source.trust))
    model, saved = load_trained_model(ckpt, ckpt_path)
    return TrainedModel(ckpt_path, source_run, int(ckpt.get("step", 0)), model.to(device).eval(), saved)


def is_external(path: Path) -> bool:
    """A path that is not a segaudit checkpoint by its form alone."""
    return (
        is_smp_dir(path)
        or is_hf_dir(path)
        or path.suffix in (".pt2", ".safetensors", ".onnx")
        or (path.is_file() and is_torchscript(path))
    )


def load_external_for_eval(cfg: DictConfig, path: Path, device: torch.device) -> TrainedModel:
    """An external model measured on the config's dataset, its input and output adapted by
    its card (sidecar file, then `card.*` overrides; unstated fields: the dataset's)."""
    if not path.exists():
        raise ConfigError(f"{path}: no such model file or folder")
    dcfg = prepare_dataset(cfg.dataset, cfg.paths.cache)
    written = read_card(path)  # the sidecar, then a card file: both were written by someone else
    if cfg.source.get("card_file"):
        written = written.merged(read_card_file(Path(str(cfg.source.card_file)).expanduser()))
    factory = cfg.source.factory or cfg.card.get("factory")  # typed by the user: no trust needed
    if factory is None and written.factory is not None:
        if not cfg.source.trust:
            raise ConfigError(
                f"{path}: its model card names a factory ({written.factory}), code that "
                f"would run; pass --trust-model if you trust it, or give --factory yourself"
            )
        factory = written.factory
    model, kind = load_external(path, factory, bool(cfg.source.trust))
    stated = (
        model.card(path)
        if isinstance(model, OnnxModel)  # the format's own card fields
        else hf_card(path)
        if kind == "hf"
        else ModelCard()
    )
    card = stated.merged(written).merged(card_from_mapping(cfg.get("card"), "card"))
    return adapt_external(cfg, dcfg, model, card, path, kind, device)


def adapt_external(
    cfg: DictConfig, dcfg: DictConfig, model: nn.Module, card: ModelCard, source: Path, kind: str, device: torch.device
) -> TrainedModel:
    """A model segaudit did not train, wrapped by its card, checked against the dataset's
    classes, with the identity its records carry (`model=external-KIND`, encoder: the
    source's name)."""
    adapted = CardAdapter(model, card, list(dcfg.transform.mean), list(dcfg.transform.std))
    adapted = adapted.to(device).eval()
    first = list_samples(dcfg, "val")[0]
    with Image.open(first.mask) as header:  # the size from the header: nothing is decoded twice
        size = (header.height, header.width)
    check_output_channels(adapted, int(dcfg.num_classes), str(source), device, size)
    return TrainedModel(source, None, 0, adapted, external_identity(cfg, dcfg, kind, source, card))


def external_identity(cfg: DictConfig, dcfg: DictConfig, kind: str, source: Path, card: ModelCard | None) -> DictConfig:
    """What the run records of a model segaudit did not train say about it."""
    return OmegaConf.create(
        {
            "dataset": OmegaConf.to_container(dcfg, resolve=True),
            "seed": cfg.seed,
            "strategy": cfg.strategy,
            "choices": {"model": f"external-{kind}", "loss": None},
            "model": {"encoder": source.name},
            "train_condition": {"name": None},
            "card": None if card is None else asdict(card),
        }
    )
