"""`ContentCheckCallback` inside a Hugging Face `Trainer` fine-tune of a tiny random-config
SegFormer (no download) on the colour scenes, evaluated every 12 steps: clean data raise no
flag at any evaluation and the values are `segaudit audit`'s on the saved folder; masks on
other images are flagged once learning stops, and the run stops."""

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset
from trained import tiny_segformer

from expected import NO_ALIGNED_CONTENT, SHARED_CROP, assert_check_matches_audit, assert_flagged_once_learning_stops
from segaudit.core.config import compose, load_group_option
from segaudit.data import build_dataset, prepare_dataset

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from segaudit.integrations.transformers import ContentCheckCallback, reduce_labels  # noqa: E402

SCENES = ["dataset.generate.n_train=96", "dataset.generate.n_val=32", "dataset.generate.n_test=4"]
NAMES = ["road", "sidewalk", "building", "vegetation", "sky", "car", "person", "pole"]


class AsHF(Dataset):
    """A segaudit split served the way HF scripts do: `pixel_values` and `labels`."""

    def __init__(self, split: Dataset):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, index):
        image, mask = self.split[index]
        return {"pixel_values": image, "labels": mask}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    settings = [f"paths.cache={cache}", *SCENES]
    return settings, prepare_dataset(compose(settings).dataset, cache)


def _fine_tune(dcfg, tmp_path, misaligned: str | None, steps: int = 144, report_to=(), attach=False, **check):
    """`misaligned`: every training mask on another scene's image, unaugmented
    (`unaugmented`) or both under one random crop (`shared_crop`). `attach`: the callback
    goes in with `attach(trainer)`, else as `Trainer(callbacks=[...])`."""
    from transformers import Trainer, TrainingArguments

    condition = load_group_option("condition", "shuffled" if misaligned else "real")
    callback = ContentCheckCallback(runs=str(tmp_path / "runs"), **check)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        eval_strategy="steps",
        eval_steps=12,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=3e-3,
        save_strategy="no",
        report_to=list(report_to),
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=tiny_segformer(8, width=16, names=NAMES),
        args=args,
        train_dataset=AsHF(build_dataset(dcfg, "train", train=misaligned != "unaugmented", condition=condition)),
        eval_dataset=AsHF(build_dataset(dcfg, "val", train=False)),
        callbacks=None if attach else [callback],
    )
    if attach:
        callback.attach(trainer)
    trainer.train()
    return trainer, callback


def test_reduce_labels_as_the_image_processors_do():
    raw = torch.tensor([[0, 1, 2], [255, 3, 0]])
    assert reduce_labels(raw).tolist() == [[255, 0, 1], [255, 2, 255]]


def test_a_clean_fine_tune_has_no_flag_and_matches_the_audit(scenes, tmp_path):
    settings, dcfg = scenes
    unaugmented = build_dataset(dcfg, "train", train=False)
    # raw annotation maps (0 = background, ids + 1), reduced by the callback
    raw = [np.where(m.numpy() == 255, 0, m.numpy() + 1) for m in (unaugmented[i][1] for i in range(len(unaugmented)))]
    trainer, callback = _fine_tune(dcfg, tmp_path, None, on_flag="stop", train_masks=raw, do_reduce_labels=True)
    assert trainer.state.global_step == 144 and len(callback.results) == 12
    assert [r.flags for r in callback.results] == [[]] * 12  # no flag at any evaluation
    # the real images' predictions were the evaluation's own, once the subset was known
    assert [r.real_pass for r in callback.results] == ["check"] + ["trainer"] * 11
    last = callback.results[-1]
    logged = [h for h in trainer.state.log_history if "eval_segaudit/content_bits" in h]
    assert len(logged) == 12 and logged[-1]["eval_segaudit/content_bits"] == pytest.approx(
        last.scalars()["segaudit/content_bits"]
    )

    trainer.model.save_pretrained(tmp_path / "segformer")
    assert_check_matches_audit(last, tmp_path / "segformer", settings, tmp_path / "runs", "hf-trainer")


@pytest.mark.parametrize(
    ("misaligned", "because", "doublings"),
    [
        # the fault counts three doublings of training after the location is learned (step 36)
        ("unaugmented", NO_ALIGNED_CONTENT, 3),
        # stalled at the prior (three doublings), or location carrying the score at two
        # checks a doubling apart (measured: step 180, learned at 24)
        ("shared_crop", SHARED_CROP, 1),
    ],
)
def test_masks_on_other_images_are_flagged_and_stopped(scenes, tmp_path, misaligned, because, doublings):
    _, dcfg = scenes
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        trainer, callback = _fine_tune(dcfg, tmp_path, misaligned, steps=480, on_flag="stop")
    assert_flagged_once_learning_stops(callback.results, because, doublings)
    assert trainer.state.global_step < 480
    assert any("segaudit content check" in str(w.message) for w in seen)


def _tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = {event.parent for event in folder.rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_shows_the_values_beside_the_loss_when_attached(scenes, tmp_path):
    pytest.importorskip("tensorboard")
    _, dcfg = scenes
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # attached: no advice to attach
        trainer, callback = _fine_tune(dcfg, tmp_path, None, steps=24, report_to=["tensorboard"], attach=True)
    scalars = _tensorboard_scalars(tmp_path / "out")
    assert [step for step, _ in scalars["eval/loss"]] == [12, 24]
    for name in ("content_bits", "content_bits_low", "content_bits_high", "miou_noise", "red_flags"):
        logged = scalars[f"eval/segaudit/{name}"]
        expected = [(r.step, r.scalars()[f"segaudit/{name}"]) for r in callback.results]
        assert [s for s, _ in logged] == [s for s, _ in expected] == [12, 24]
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6, abs=1e-6)
    # trainer.evaluate() at the last step returns the same values without a new check
    again = trainer.evaluate()
    assert len(callback.results) == 2
    assert again["eval_segaudit/content_bits"] == callback.results[-1].scalars()["segaudit/content_bits"]


def test_given_as_trainer_callbacks_reporting_misses_the_values_and_says_so(scenes, tmp_path):
    pytest.importorskip("tensorboard")
    _, dcfg = scenes
    with pytest.warns(UserWarning, match=r"report_to=\['tensorboard'\].*attach\(trainer\)"):
        trainer, callback = _fine_tune(dcfg, tmp_path, None, steps=12, report_to=["tensorboard"])
    assert len(callback.results) == 1
    (evaluation,) = [h for h in trainer.state.log_history if "eval_loss" in h]
    assert "eval_segaudit/content_bits" in evaluation  # the metrics still hold them
    assert not any(tag.startswith("eval/segaudit/") for tag in _tensorboard_scalars(tmp_path / "out"))
