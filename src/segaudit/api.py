"""The Python API: audit a model from your own code, for example at the end of your own
training loop, with no checkpoint written and no command line.

    import segaudit
    flags = segaudit.check_model(model, dataset="cityscapes", root="/data/cityscapes",
                                 raise_on_flag=False)

`audit_model` returns the same run record that `segaudit audit` writes (it lands in
`segaudit report` like any other audit); `check_model` returns or raises its red flags.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segaudit.core.config import compose
from segaudit.core.devices import resolve_device
from segaudit.core.errors import SegauditError
from segaudit.data import prepare_dataset
from segaudit.models.checkpoints import adapt_external
from segaudit.models.sources import ModelCard, card_from_mapping
from segaudit.runs.records import RunRecord
from segaudit.workflows.audit import audit_trained


class RedFlags(SegauditError):
    """`check_model` found red flags; `.flags` lists them, `.record` is the audit."""

    exit_code = 1

    def __init__(self, flags: list[str], record: RunRecord):
        super().__init__("; ".join(flags))
        self.flags, self.record = flags, record


class _CallableModel(nn.Module):
    """A plain function from images to logits, as a module."""

    def __init__(self, function: Callable[[torch.Tensor], Any]):
        super().__init__()
        self.function = function

    def forward(self, images: torch.Tensor) -> Any:
        return self.function(images)


def audit_model(
    model: nn.Module | Callable[[torch.Tensor], Any],
    dataset: str = "synthetic",
    root: str | Path | None = None,
    card: ModelCard | dict | None = None,
    runs: str | Path = "runs",
    overrides: Sequence[str] = (),
    name: str = "python-model",
    reported_miou: float | None = None,
) -> RunRecord:
    """Audit a model in memory on a dataset's val split: real, noise, blank and shuffled
    inputs against the analytic prior, with red flags (`segaudit audit`'s record).

    Args:
        model: any `nn.Module`, or a callable from a normalised RGB batch (N, 3, H, W) to
            logits (a tensor, a tuple, or a dict with `out`/`logits`). It is run in eval
            mode and put back in the mode it was in; it is not moved off its device.
        dataset: a `conf/dataset` preset (`cityscapes`, `folder`, ...).
        root: the dataset's folder (`dataset.root`); None keeps the preset's.
        card: the model's input/output conventions (`segaudit.models.sources.ModelCard` or a
            mapping of its fields); unstated fields take the dataset's values.
        runs: the runs folder the record is written under (`paths.runs`).
        overrides: more config overrides, as on the command line (`train.eval_batch_size=4`).
        name: what the record calls the model (its `encoder` column).
        reported_miou: the mIoU your own evaluation reported (see the record's `finding`).

    Returns:
        The audit's run record; `record["audit"]["red_flags"]` is empty for a model that
        reads the image.

    Raises:
        SegauditError: a bad dataset, override or card, or a model whose output does not
            have one channel per dataset class.
    """
    settings = [f"dataset={dataset}", f"paths.runs={runs}", *overrides]
    settings += [] if root is None else [f"dataset.root={root}"]
    settings += [] if reported_miou is None else [f"audit.reported_miou={float(reported_miou)}"]
    cfg = compose(settings)
    given = card if isinstance(card, ModelCard) else card_from_mapping(card, "card")
    card = card_from_mapping(cfg.get("card"), "card").merged(given)
    module = model if isinstance(model, nn.Module) else _CallableModel(model)
    weights = next(iter(module.parameters()), None)
    device = weights.device if weights is not None else resolve_device(str(cfg.device))
    t0 = time.perf_counter()
    dcfg = prepare_dataset(cfg.dataset, cfg.paths.cache)
    was_training = module.training
    module.eval()
    try:
        trained = adapt_external(cfg, dcfg, module, card, Path(name), "python", device)
        return audit_trained(cfg, trained, dcfg, device, command=f"segaudit.audit_model({name!r})", t0=t0)
    finally:
        module.train(was_training)


def check_model(
    model: nn.Module | Callable[[torch.Tensor], Any], *args, raise_on_flag: bool = True, **kwargs
) -> list[str]:
    """`audit_model`, reduced to its red flags, each decided by a 95% interval over the val
    images: real images explain no more of the labels than the analytic prior, or no more
    than another image's pixels, or noise input keeps over 70% of what real images explain
    (`gate.evidence`; `gate=seed`: the investigation's mIoU margins, `gate.red_flags`).

    Returns:
        The red flags (empty: the model reads the image), when `raise_on_flag` is False.

    Raises:
        RedFlags: with `raise_on_flag` (the default), when any flag fires.
    """
    record = audit_model(model, *args, **kwargs)
    flags = list(record["audit"]["red_flags"])
    if flags and raise_on_flag:
        raise RedFlags(flags, record)
    return flags


__all__ = ["RedFlags", "audit_model", "check_model"]
