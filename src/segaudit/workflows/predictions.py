"""Predictions-only audits, for models no Python loader reaches (mmsegmentation, detectron2,
TensorFlow, anything): segaudit writes the inputs, the user's own inference writes label
PNGs, segaudit scores them exactly as an in-process audit would.

    segaudit audit export-inputs DIR dataset=...      # DIR/<condition>/<stem>.png + manifest
    (your inference: DIR/<condition>/<stem>.png -> PRED/<condition>/<stem>.png, class ids)
    segaudit audit score-predictions PRED dataset=...       # the audit record, no model loaded

The exported images are the 8-bit RGB pixels the in-process audit feeds a model before
normalisation (the same seeded noise, the same blank, the same shuffled pairing), so a
model's predictions on them give the in-process audit's numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image

from segaudit import runs
from segaudit.core.config import load_group_option
from segaudit.core.errors import ConfigError, DataError, first_line
from segaudit.data import build_dataset, eval_loader, prepare_dataset
from segaudit.data.conditions import DeviceImages
from segaudit.diagnostics.audit import CONDITIONS, RealAndShuffled
from segaudit.measure.information import label_scores, stack_rows
from segaudit.measure.metrics import AgreementMatrix, ConfusionMatrix
from segaudit.models.checkpoints import TrainedModel, external_identity
from segaudit.workflows.audit import finish_audit

MANIFEST = "manifest.json"


def _to_png(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, path: Path) -> None:
    pixels = ((image * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)  # stems keep their sub-folders (Cityscapes' cities)
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path)


def _val_inputs(cfg: DictConfig, dcfg: DictConfig):
    """(val indices, real, shuffled, masks) batch by batch, in the in-process audit's order."""
    triples = RealAndShuffled(
        build_dataset(dcfg, "val", train=False),
        build_dataset(dcfg, "val", train=False, condition=load_group_option("condition", "shuffled")),
    )
    loader = eval_loader(triples, int(cfg.train.eval_batch_size))
    return triples, zip(loader.batch_sampler, loader)


def export_inputs(cfg: DictConfig, folder: Path) -> dict:
    """Write the val images under every audit condition to `folder/<condition>/<stem>.png`
    and a manifest (`manifest.json`) saying what to write back.

    Returns:
        The manifest.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--export-inputs {folder}: a file is in the way; give a new folder")
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"--export-inputs {folder}: the folder is not empty; give a new one")
    dcfg = prepare_dataset(cfg.dataset, cfg.paths.cache)
    triples, batches = _val_inputs(cfg, dcfg)
    mean = torch.tensor(list(dcfg.transform.mean)).view(3, 1, 1)
    std = torch.tensor(list(dcfg.transform.std)).view(3, 1, 1)
    device = torch.device("cpu")  # the seeded noise is drawn where the audit's CPU run draws it
    noise = DeviceImages(
        load_group_option("condition", "noise"), dcfg.transform.mean, dcfg.transform.std, device, seeded=True
    )
    blank = DeviceImages(
        load_group_option("condition", "blank"), dcfg.transform.mean, dcfg.transform.std, device, seeded=True
    )
    for name in CONDITIONS:
        (folder / name).mkdir(parents=True, exist_ok=True)
    stems = [s.stem for s in triples.real.samples]
    images = []
    for indices, (real, others, masks) in batches:
        for name, batch in (("real", real), ("noise", noise(real)), ("blank", blank(real)), ("shuffled", others)):
            for index, image in zip(indices, batch):
                _to_png(image, mean, std, folder / name / f"{stems[index]}.png")
        images += [{"stem": stems[i], "size": list(m.shape[-2:])} for i, m in zip(indices, masks)]
    manifest = {
        "dataset": str(dcfg.name),
        "root": str(dcfg.root),
        "num_classes": int(dcfg.num_classes),
        "class_names": list(dcfg.class_names),
        "conditions": list(CONDITIONS),
        "mean": list(dcfg.transform.mean),
        "std": list(dcfg.transform.std),  # segaudit's normalisation
        "eval_batch_size": int(cfg.train.eval_batch_size),
        "inputs": "<condition>/<stem>.png: 8-bit RGB, the pixels before normalisation",
        "predictions": "write PRED/<condition>/<stem>.png: one 8-bit class id (0..num_classes-1) "
        "per pixel, the size given for the stem; then segaudit audit score-predictions PRED",
        "images": sorted(images, key=lambda item: item["stem"]),
    }
    runs.atomic_write(folder / MANIFEST, lambda fh: json.dump(manifest, fh, indent=2))
    return manifest


def _read_prediction(path: Path, size: tuple[int, int], num_classes: int) -> torch.Tensor:
    if not path.is_file():
        raise DataError(f"{path}: prediction missing (one PNG per exported input)")
    try:
        with Image.open(path) as png:
            labels = np.array(png)
    except OSError as err:
        raise DataError(f"{path}: unreadable prediction ({first_line(err)})") from None
    if labels.ndim != 2:
        raise DataError(
            f"{path}: a prediction is one class id per pixel (a single-channel PNG), got shape {labels.shape}"
        )
    if tuple(labels.shape) != tuple(size):
        raise DataError(f"{path}: prediction is {labels.shape[0]}x{labels.shape[1]}, its label is {size[0]}x{size[1]}")
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(
            f"{path}: class id {int(labels.max())} outside 0..{num_classes - 1} (a prediction holds "
            f"the dataset's class ids, 8-bit)"
        )
    return torch.from_numpy(labels.astype(np.int64))


def score_predictions(cfg: DictConfig, folder: Path, command: str = "") -> dict:
    """`segaudit audit score-predictions DIR`: the audit record of label PNGs someone else's
    inference wrote for the exported inputs (no model is loaded)."""
    t0 = time.perf_counter()
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"--predictions {folder}: no such folder")
    dcfg = prepare_dataset(cfg.dataset, cfg.paths.cache)
    num_classes, ignore_index = int(dcfg.num_classes), int(dcfg.ignore_index)
    metrics = {
        "real": ConfusionMatrix(num_classes, ignore_index),
        "noise": AgreementMatrix(num_classes, ignore_index),
        "blank": ConfusionMatrix(num_classes, ignore_index),
        "shuffled": ConfusionMatrix(num_classes, ignore_index),
    }
    # Only the labels are needed: a device condition skips decoding the (full-size) images.
    val = build_dataset(dcfg, "val", train=False, condition=load_group_option("condition", "blank"))
    rows = {name: [] for name in CONDITIONS}  # per image: labels only, so no log-likelihood
    for sample, (_, mask) in zip(val.samples, val):
        size = tuple(mask.shape[-2:])
        read = {
            name: _read_prediction(folder / name / f"{sample.stem}.png", size, num_classes)[None] for name in CONDITIONS
        }
        target = mask[None].long()
        metrics["real"].update(read["real"], target)
        metrics["noise"].update(read["noise"], target, read["real"])
        metrics["blank"].update(read["blank"], target)
        metrics["shuffled"].update(read["shuffled"], target)
        for name in CONDITIONS:
            rows[name].append(label_scores(None, read[name][0].numpy(), mask.numpy(), num_classes, ignore_index))
    results = {name: m.compute() for name, m in metrics.items()}
    per_image = {name: stack_rows(rows[name]) for name in CONDITIONS}
    trained = TrainedModel(folder, None, 0, None, external_identity(cfg, dcfg, "predictions", folder, None))
    inference = {"mode": "predictions", "source": str(folder)}
    return finish_audit(cfg, trained, dcfg, torch.device("cpu"), results, inference, command, t0, per_image)
