"""The content check as a Lightning callback (`pip install segaudit[lightning]`).

    trainer = L.Trainer(callbacks=[ContentCheck(num_classes=19, on_flag="stop")])

At every validation end (or every `every_n_val`-th), the model is measured on the first
`subset` images of the validation loader under real, noise, blank and shuffled input
against the analytic prior of the training labels; the values go to the trainer's own
loggers (`segaudit/content_bits` with its interval, `segaudit/miou_*`, `segaudit/red_flags`:
the flags that count at this point of training, `ContentMonitor` rules). At fit end one
`phase=audit` record is written under `runs`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_warn
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("segaudit.integrations.lightning needs Lightning: pip install 'segaudit[lightning]'") from None

from torch import nn

from segaudit.core.errors import ConfigError
from segaudit.integrations.content_check import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ContentCheckResult,
    ContentMonitor,
    ContentRedFlags,
    check_settings,
    masks_of,
    split_batch,
)


class ContentCheck(pl.Callback):
    """Does the model read the image? Checked at Lightning's validation ends.

    The LightningModule's `forward` takes normalised images and returns logits (a tensor,
    or a mapping or object with `out`/`logits`); a module without one names its network
    with `network`.

    Args:
        num_classes: the model's output channels.
        subset: validation images checked (the first ones the val loader gives).
        every_n_val: check at every n-th validation end (sanity checks skipped).
        on_flag: `warn` (a warning), `stop` (the trainer stops after this validation) or
            `raise` (`ContentRedFlags`).
        train_masks: the training label maps the prior is counted from; default: every
            mask of the datamodule's `train_dataloader()` (augmented crops make that prior
            weaker than the one of the unaugmented labels: give them when you can).
        ignore_index, mean, std, gate, batch_size: as `ContentMonitor`'s.
        runs: the runs folder the fit-end record goes to (None: no record).
        strategy, model_name, dataset_name, class_names: what the record calls the run.
        batch_to_pair: a function from a batch to (images, masks), for batches that are
            not (images, masks) tuples or `image`/`mask` mappings.
        network: the network inside the LightningModule that maps images to logits, for
            a module with no `forward` of its own (`network=lambda module: module.net`).
    """

    def __init__(
        self,
        num_classes: int,
        subset: int = 32,
        every_n_val: int = 1,
        on_flag: str = "warn",
        train_masks: Iterable | None = None,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        gate: str = "default",
        batch_size: int = 8,
        runs: str | None = "runs",
        strategy: str = "lightning",
        model_name: str | None = None,
        dataset_name: str = "lightning-data",
        class_names: Sequence[str] | None = None,
        batch_to_pair=split_batch,
        network: Callable[[pl.LightningModule], nn.Module] | None = None,
    ):
        check_settings("ContentCheck", on_flag, every_n_val, subset)
        self.network = network
        self.num_classes, self.subset, self.every_n_val, self.on_flag = num_classes, subset, every_n_val, on_flag
        self.train_masks, self.ignore_index, self.batch_to_pair = train_masks, ignore_index, batch_to_pair
        self.settings = {"mean": mean, "std": std, "gate": gate, "batch_size": batch_size}
        self.record = {"strategy": strategy, "dataset_name": dataset_name, "class_names": class_names}
        self.runs, self.model_name = runs, model_name
        self.monitor: ContentMonitor | None = None
        self.results: list[ContentCheckResult] = []
        self._validations = 0

    def _build_monitor(self, trainer: pl.Trainer) -> ContentMonitor:
        val = trainer.val_dataloaders
        val = val[0] if isinstance(val, (list, tuple)) else val
        if val is None:
            raise ConfigError("ContentCheck: the trainer has no validation dataloader")
        masks = self.train_masks
        if masks is None:
            if trainer.datamodule is None:
                raise ConfigError("ContentCheck: give train_masks, or fit with a datamodule")
            masks = masks_of(trainer.datamodule.train_dataloader(), self.batch_to_pair)
        return ContentMonitor.from_batches(
            val,
            masks,
            self.num_classes,
            self.subset,
            self.ignore_index,
            batch_to_pair=self.batch_to_pair,
            **self.settings,
        )

    def _network(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.network is not None:
            return self.network(pl_module)
        if type(pl_module).forward is pl.LightningModule.forward:
            raise ConfigError(
                f"ContentCheck: {type(pl_module).__name__} has no forward() to feed images to; define "
                "forward(images) -> logits, or give ContentCheck(network=lambda module: module.net)"
            )
        return pl_module

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A validation that ends in a check: its forward passes of the subset are the
        check's real pass (`ContentMonitor.watch`)."""
        if trainer.sanity_checking or (self._validations + 1) % self.every_n_val:
            return
        model = self._network(pl_module)
        if self.monitor is None:
            self.monitor = self._build_monitor(trainer)
        self.monitor.watch(model)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if self._validations % self.every_n_val:
            return
        model = self._network(pl_module)
        if self.monitor is None:
            self.monitor = self._build_monitor(trainer)
        step = int(trainer.global_step)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the flags are reported below, through Lightning
            result = self.monitor.check(model, step, "warn" if self.on_flag == "raise" else self.on_flag)
        self.results.append(result)
        for logger in trainer.loggers:
            logger.log_metrics(result.scalars(), step=step)
        if result.flags:
            if self.on_flag == "raise":
                raise ContentRedFlags(result.flags, step)
            rank_zero_warn(f"segaudit content check, step {step}: " + "; ".join(result.flags))
        # every rank checks its own shard of the val loader: stop them all together, or none
        if trainer.strategy.reduce_boolean_decision(bool(result.stop), all=False):
            trainer.should_stop = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.monitor is not None:
            self.monitor.unwatch()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.runs is None or self.monitor is None or not self.results or trainer.global_rank != 0:
            return
        name = self.model_name or type(pl_module).__name__
        self.monitor.write_record(
            self.results[-1],
            runs=self.runs,
            model_name=name,
            command=f"lightning ContentCheck ({name})",
            **self.record,
        )
