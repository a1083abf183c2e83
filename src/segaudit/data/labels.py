"""Label mappings: raw ids in a dataset's label files -> the train ids segaudit learns.

A mapping becomes a 256-entry lookup table applied right after decoding, in training,
evaluation and the analytic prior alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from segaudit.core.config import safe_instantiate
from segaudit.core.datafiles import check_plain
from segaudit.core.errors import DataError


def cityscapes_label_map() -> dict[int, int]:
    """Cityscapes' 34 label ids -> 19 train ids (255 ignore), from `cityscapesscripts`.

    The table is the one the dataset's authors ship (`cityscapesscripts.helpers.labels`),
    not a copy: ids with trainId 255 or -1 map to ignore.
    """
    from cityscapesscripts.helpers.labels import labels

    return {label.id: (label.trainId if 0 <= label.trainId < 255 else 255) for label in labels if label.id >= 0}


def resolve_label_map(value) -> dict[int, int] | None:
    """A config `label_map`: null, a {raw: train} mapping, or a `_target_` that returns one."""
    if value is None:
        return None
    if isinstance(value, DictConfig) and "_target_" in value:
        value = safe_instantiate(value, "dataset.label_map")
    elif isinstance(value, DictConfig):
        value = OmegaConf.to_container(value)
    try:
        return {int(raw): int(train) for raw, train in dict(value).items()}
    except (TypeError, ValueError):
        raise DataError(f"dataset.label_map: expected a mapping of integer ids, got {value!r}") from None


def label_lut(dcfg: DictConfig) -> np.ndarray | None:
    """The uint8 lookup table for `dcfg.label_map` (None when labels are used as stored).

    `dataset.unmapped` says what happens to ids the map does not list: `ignore` (255) or
    `keep` (unchanged).
    """
    mapping = resolve_label_map(dcfg.get("label_map"))
    if mapping is None:
        return None
    keep = dcfg.get("unmapped", "ignore") == "keep"
    lut = np.arange(256, dtype=np.uint8) if keep else np.full(256, 255, dtype=np.uint8)
    for raw, train in mapping.items():
        if not (0 <= raw < 256 and 0 <= train < 256):
            raise DataError(f"dataset.label_map: {raw} -> {train} is outside 0..255")
        lut[raw] = train
    return lut


def names_from_json(path: Path, num_classes: int) -> list[str] | None:
    """Class names from a Mapillary-style `config_*.json` (`labels[i].readable`), if present."""
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text())["labels"]
        names = [str(label.get("readable") or label["name"]) for label in labels[:num_classes]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        raise DataError(f"{path}: cannot read class names ({err})") from None
    check_plain(names, f"{path} labels", DataError)
    return names
