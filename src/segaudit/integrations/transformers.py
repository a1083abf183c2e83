"""The content check as a Hugging Face `Trainer` callback (`pip install segaudit[hf]`).

    trainer = Trainer(model, args, train_dataset=train, eval_dataset=val)
    ContentCheckCallback(on_flag="stop").attach(trainer)

At every evaluation (or every `every_n_eval`-th) the model is measured on the first
`subset` images of the eval dataloader (`pixel_values`, `labels`): SegFormer's logits at
1/4 resolution are upsampled to the labels as the audit does. The classes are
`model.config.id2label`, the ignore value `semantic_loss_ignore_index`. The values join
the evaluation's metrics as the Trainer logs them (`eval_segaudit/...`), so the reporting
integrations (TensorBoard, W&B, MLflow, ...) receive them, `trainer.evaluate()` returns
them and `metric_for_best_model` may name them. At the end of training one `phase=audit`
record is written under `runs`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

try:
    from transformers import TrainerCallback
    from transformers.integrations import INTEGRATION_TO_CALLBACK
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("segaudit.integrations.transformers needs transformers: pip install 'segaudit[hf]'") from None

import torch

from segaudit.core.errors import ConfigError
from segaudit.integrations.content_check import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ContentCheckResult,
    ContentMonitor,
    ContentRedFlags,
    check_settings,
    masks_of,
)


def reduce_labels(masks, ignore_index: int = 255):
    """`do_reduce_labels`: class 0 (background) becomes `ignore_index`, every other id
    moves down by one, as the image processors do to ADE20k-style labels."""
    masks = masks.clone()
    background = masks == 0
    masks[(masks != ignore_index) & ~background] -= 1
    masks[background] = ignore_index
    return masks


class ContentCheckCallback(TrainerCallback):
    """Does the model read the image? Checked at the `Trainer`'s evaluations.

    Add it with `attach(trainer)` so that the reporting integrations receive its values;
    as `Trainer(callbacks=[...])` they only reach the metrics and `state.log_history`.

    Args:
        subset: eval images checked (the first ones the eval dataloader gives).
        every_n_eval: check at every n-th evaluation.
        on_flag: `warn`, `stop` (`control.should_training_stop`) or `raise` (`ContentRedFlags`).
        train_masks: the training label maps the prior is counted from; default: every
            `labels` of the training dataloader (already the model's ids, as its loss sees them).
        do_reduce_labels: `train_masks` are raw annotation maps that the image processor
            reduces (`reduce_labels`: 0 is background, ignored); the dataloaders' labels are
            taken as the model's loss takes them.
        mean, std: the normalisation of `pixel_values` (the image processor's).
        gate, batch_size, runs, strategy, model_name, dataset_name: as Lightning's `ContentCheck`.
    """

    def __init__(
        self,
        subset: int = 32,
        every_n_eval: int = 1,
        on_flag: str = "warn",
        train_masks: Iterable | None = None,
        do_reduce_labels: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        gate: str = "default",
        batch_size: int = 8,
        runs: str | None = "runs",
        strategy: str = "hf-trainer",
        model_name: str | None = None,
        dataset_name: str = "hf-data",
    ):
        check_settings("ContentCheckCallback", on_flag, every_n_eval, subset)
        self.subset, self.every_n_eval, self.on_flag = subset, every_n_eval, on_flag
        self.train_masks, self.do_reduce_labels = train_masks, do_reduce_labels
        self.settings = {"mean": mean, "std": std, "gate": gate, "batch_size": batch_size}
        self.runs, self.strategy, self.model_name, self.dataset_name = runs, strategy, model_name, dataset_name
        self.monitor: ContentMonitor | None = None
        self.results: list[ContentCheckResult] = []
        self._evaluations = 0
        self._ignore_index = 255
        self._attached = False
        self._evaluated_at: int | None = None

    def _build_monitor(self, model, eval_dataloader, train_dataloader) -> ContentMonitor:
        config = model.config
        self._ignore_index = int(getattr(config, "semantic_loss_ignore_index", 255))
        if eval_dataloader is None:
            raise ConfigError("ContentCheckCallback: the Trainer has no eval dataset")
        masks = self.train_masks
        if masks is not None and self.do_reduce_labels:
            masks = (reduce_labels(torch.as_tensor(m), self._ignore_index) for m in masks)
        if masks is None:
            if train_dataloader is None:
                raise ConfigError("ContentCheckCallback: give train_masks (the Trainer has no train dataloader)")
            masks = masks_of(train_dataloader)
        return ContentMonitor.from_batches(
            eval_dataloader,
            masks,
            len(config.id2label),
            self.subset,
            self._ignore_index,
            **self.settings,
        )

    def attach(self, trainer) -> ContentCheckCallback:
        """Add this callback to `trainer` ahead of its reporting integrations.

        The Trainer hands an evaluation's metrics to its callbacks in their order, and
        `Trainer(callbacks=[...])` puts the user's after the integrations `report_to`
        names, which would then log the metrics without the check's values.
        """
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        reporting = tuple(INTEGRATION_TO_CALLBACK.values())
        first = next((i for i, cb in enumerate(callbacks) if isinstance(cb, reporting)), len(callbacks))
        callbacks.insert(first, self)
        self._attached = True
        return self

    def on_train_begin(self, args, state, control, **kwargs):
        if args.report_to and not self._attached:
            warnings.warn(
                f"ContentCheckCallback: report_to={list(args.report_to)} logs each evaluation before "
                "callbacks given as Trainer(callbacks=...) add to it; add the check with "
                "ContentCheckCallback(...).attach(trainer) for them to receive eval_segaudit/*",
                stacklevel=2,
            )
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        """An evaluation that ends in a check comes next: its forward passes of the subset
        are the check's real pass (`ContentMonitor.watch`; from the second check on, once
        the subset is known)."""
        self._watch_if_checked(state, control, model)
        return control

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._watch_if_checked(state, control, model)
        return control

    def _watch_if_checked(self, state, control, model) -> None:
        checked = int(state.global_step) != self._evaluated_at and (self._evaluations + 1) % self.every_n_eval == 0
        if control.should_evaluate and checked and self.monitor is not None:
            self.monitor.watch(model)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        """An evaluation's metrics (`<prefix>_runtime` in them, prefix not `train`): check
        once per step and add the values before the callbacks after this one log them."""
        prefixes = [key[: -len("_runtime")] for key in logs or {} if key.endswith("_runtime")]
        if not prefixes or prefixes[0] == "train":
            return control
        step = int(state.global_step)
        if step != self._evaluated_at:  # several eval datasets log one evaluation each
            self._evaluated_at = step
            self._evaluations += 1
            if self._evaluations % self.every_n_eval == 0:
                self._check(model, step, kwargs)
        if not self.results or self.results[-1].step != step:
            return control
        result = self.results[-1]
        values = result.scalars(prefix="eval_segaudit/")
        logs.update(values)
        history = state.log_history[-1] if state.log_history else {}
        if history.get("step") == step and f"{prefixes[0]}_runtime" in history:
            history.update(values)  # the entry the Trainer made of these logs
        else:
            state.log_history.append({**values, "step": step})
        if result.flags and self.on_flag == "raise":
            raise ContentRedFlags(result.flags, step)
        if result.stop:
            control.should_training_stop = True
        return control

    def _check(self, model, step: int, events: dict) -> None:
        if self.monitor is None:
            self.monitor = self._build_monitor(model, events.get("eval_dataloader"), events.get("train_dataloader"))
        self.results.append(self.monitor.check(model, step, "warn" if self.on_flag == "raise" else self.on_flag))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.monitor is not None:
            self.monitor.unwatch()
        if self.runs is None or self.monitor is None or not self.results or not state.is_world_process_zero:
            return control
        name = self.model_name or type(model).__name__
        names = [model.config.id2label[k] for k in sorted(model.config.id2label)]
        self.monitor.write_record(
            self.results[-1],
            runs=self.runs,
            strategy=self.strategy,
            model_name=name,
            dataset_name=self.dataset_name,
            class_names=names,
            command=f"transformers ContentCheckCallback ({name})",
        )
        return control
