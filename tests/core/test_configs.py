"""Every config file composes, instantiates and trains one step (smp models at 32 px on CPU)."""

import math

import pytest
import torch
from hydra.utils import instantiate
from layouts import PRESETS

from segaudit.core.config import CONF_DIR, compose, config_groups
from segaudit.models.build import build_model
from segaudit.runs.records import read_record
from segaudit.train.engine import train

ALL_OPTIONS = [(group, option) for group, options in config_groups().items() for option in options]


def test_every_group_has_options():
    groups = config_groups()
    assert {"dataset", "model", "loss", "optim", "condition", "gate"} <= set(groups)
    assert {"real", "noise", "blank", "shuffled", "cross", "generated"} <= set(groups["condition"])
    assert {"deeplabv3plus", "pspnet", "segformer", "unet"} <= set(groups["model"])
    assert (CONF_DIR / "config.yaml").is_file()


@pytest.mark.parametrize("group,option", ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_config_composes_instantiates_and_trains_one_step(group, option, tiny, synth_root, runs_root):
    overrides = [o for o in tiny if not o.startswith(f"{group}=")]
    if group == "dataset":
        overrides = [o for o in overrides if not o.startswith("dataset.")]
        overrides += [f"dataset={option}", "dataset.transform.crop=[32,32]"]
        if option in ("synthetic", "synthetic_hard"):
            overrides += [
                "dataset.generate.n_train=4",
                "dataset.generate.n_val=2",
                "dataset.generate.n_test=2",
                "dataset.generate.size=32",
            ]
        elif option in ("folder", "outside15k"):
            overrides.append(f"dataset.root={synth_root}")
        else:  # official layouts: tests/layouts.py builds a fixture for each
            root = synth_root.parent / f"layout_{option}"
            if not root.exists():
                PRESETS[option][0](root)
            overrides.append(f"dataset.root={root}")
    elif group == "condition":  # mounted twice: train_condition and eval_condition
        overrides += [f"train_condition={option}", f"eval_condition={option}"]
        roots = {"cross": synth_root, "generated": synth_root / "images"}
        if option in roots:
            overrides += [f"train_condition.root={roots[option]}", f"eval_condition.root={roots[option]}"]
    else:
        overrides.append(f"{group}={option}")
    cfg = compose(overrides + ["train.iters=1"])
    if group == "condition":
        assert cfg.train_condition.name == cfg.eval_condition.name == option
    else:
        assert cfg.choices[group] == option
    if group == "model":
        model = build_model(cfg.model, num_classes=8).eval()
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 8, 32, 32)
    if group == "optim":
        assert isinstance(instantiate(cfg.optim, params=[torch.nn.Parameter(torch.zeros(1))]), torch.optim.Optimizer)
    record = train(cfg)
    assert record["status"] == "completed" and record["step"] == 1
    saved = read_record(runs_root / record["run_id"])
    # The record on disk holds the final evaluation, at step 1, on labelled val pixels.
    assert saved["metrics"]["miou"] == pytest.approx(saved["history"][-1]["miou"], nan_ok=True)
    assert saved["history"][-1]["step"] == 1 and math.isfinite(saved["metrics"]["aacc"])
