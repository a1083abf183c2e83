"""`segaudit data check`: the data layer's per-file check (`segaudit.data.check`), then,
with train and val both clean, whether their label layouts agree (split consistency).
The file check sits in `data` because training runs it before every run; the layout
comparison needs the prior's counts from `measure`, so it sits here, above both."""

from __future__ import annotations

from omegaconf import DictConfig

from segaudit.core.errors import DataError
from segaudit.data import prepare_dataset
from segaudit.data.check import CheckReport, Problem, check_dataset
from segaudit.measure.consistency import split_consistency


def run_check(cfg: DictConfig, splits=("train", "val"), probe: bool = True) -> tuple[CheckReport, DictConfig]:
    """`segaudit data check`: prepare the configured dataset and check it; with both train
    and val checked and free of errors, compare their label layouts too."""
    dcfg = prepare_dataset(cfg.dataset, cfg.paths.cache)
    known = [k for k in dcfg.layout if k not in ("image_suffix", "mask_suffix")]
    unknown = [s for s in splits if s not in known]
    if unknown or not splits:
        raise DataError(
            f"--splits {','.join(splits)}: dataset={dcfg.name} has no split "
            f"'{unknown[0] if unknown else ''}' (its splits: {', '.join(known)})"
        )
    report = check_dataset(dcfg, splits=splits, probe=probe)
    if {"train", "val"} <= set(splits) and not report.errors:
        report.consistency = split_consistency(dcfg, cfg.gate.split)
        report.problems += [
            Problem("val", "train/val labels", f["why"], error=False) for f in report.consistency["flagged"]
        ]
    return report, dcfg
