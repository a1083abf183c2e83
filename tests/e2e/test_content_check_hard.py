"""The training-time content check on scenes learned slowly (`dataset=synthetic_hard`:
grey textures, no colour code), in a plain loop, known truth:

- a clean pipeline is never flagged, although the audit's flags are up at every check for
  the first hundreds of steps (it learns where classes sit long before it reads content);
- a pipeline whose training masks sit on other images is flagged once "its own image helps
  no more than another image's pixels" held over three doublings of training with the
  location learned (step 400 or 800 with checks at every doubling from 25; the location is
  learned by step 50 or 100).

`scripts/content_check_hard.py` measures the same over seeds and longer budgets
(docs/check-every-training.md).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from segaudit.core.config import compose, load_group_option
from segaudit.data import build_dataset, prepare_dataset
from segaudit.integrations.content_check import ContentMonitor
from segaudit.models.build import build_model

CHECKS = (25, 50, 100, 200, 400, 800)


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return prepare_dataset(compose([f"paths.cache={cache}", "dataset=synthetic_hard"]).dataset, cache)


def _train_and_check(dcfg, broken: bool) -> list:
    torch.manual_seed(0)
    condition = load_group_option("condition", "shuffled" if broken else "real")
    train = build_dataset(dcfg, "train", train=True, condition=condition)
    loader = DataLoader(train, batch_size=8, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0))
    unaugmented = build_dataset(dcfg, "train", train=False, condition=condition)
    monitor = ContentMonitor.from_batches(
        DataLoader(build_dataset(dcfg, "val", train=False), batch_size=16),
        (unaugmented[i][1] for i in range(len(unaugmented))),
        int(dcfg.num_classes),
        mean=dcfg.transform.mean,
        std=dcfg.transform.std,
    )
    model = build_model(compose([]).model, int(dcfg.num_classes))  # DeepLabV3+ / ResNet-18
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    results, step = [], 0
    while step < CHECKS[-1]:
        for images, masks in loader:
            loss = F.cross_entropy(model(images), masks, ignore_index=255)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step in CHECKS:
                results.append(monitor.check(model, step, on_flag="stop"))
                if results[-1].stop:
                    return results
            if step == CHECKS[-1]:
                break
    return results


@pytest.mark.slow
def test_a_clean_pipeline_on_slow_data_is_not_flagged_while_it_learns(hard):
    results = _train_and_check(hard, broken=False)
    assert [r.step for r in results] == list(CHECKS)
    assert [r.flags for r in results] == [[]] * len(CHECKS), [(r.step, r.state, r.flags) for r in results]
    assert results[1].held and results[1].location_part >= 0.9  # the audit flags it, the location learned
    versus = results[-1].findings.evidence["versus"]["shuffled"]["bits"]
    assert versus["low"] > 0  # by the last check its own image surely helps


@pytest.mark.slow
def test_masks_on_other_images_are_flagged_on_slow_data(hard):
    results = _train_and_check(hard, broken=True)
    flagged = results[-1]
    assert flagged.stop and flagged.step <= 800, [(r.step, r.state, r.held) for r in results]
    assert all(r.held and not r.flags for r in results[:-1])  # the audit's flags, held until then
    assert any("another image's pixels" in f for f in flagged.flags)
