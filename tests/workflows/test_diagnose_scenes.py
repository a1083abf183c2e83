"""`segaudit diagnose` end to end on small colour scenes, fast: a broken pipeline, a clean
one and a partly broken one at a short budget. The same rules on the slow-to-learn texture
scenes (minutes each) are in tests/e2e/test_hard_scenes.py; on numbers, in
tests/workflows/test_diagnose.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scenes import permute_masks
from segaudit.cli import app
from segaudit.data.synthetic import SynthSpec, write_synthetic
from segaudit.diagnostics.verdict import HEALTHY, INCONCLUSIVE, PIPELINE_FAULT

runner = CliRunner()


@pytest.fixture(scope="module")
def small_scenes(tmp_path_factory) -> dict[str, Path]:
    """64 + 128 colour scenes of 32 px, clean and with every training mask moved one image
    along; and 256 + 128 with 30% of them moved (fewer passes over each training pair, so
    the model memorises fewer of the broken ones)."""
    base = tmp_path_factory.mktemp("small")
    clean = write_synthetic(base / "clean", SynthSpec(n_train=64, n_val=128, size=32))
    more = write_synthetic(base / "more", SynthSpec(n_train=256, n_val=128, size=32))
    return {
        "clean": clean,
        "broken": permute_masks(clean, base / "broken", share=1.0),
        "partial": permute_masks(more, base / "partial", share=0.3),
    }


@pytest.mark.parametrize("case,expected", [("broken", PIPELINE_FAULT), ("clean", HEALTHY), ("partial", PIPELINE_FAULT)])
def test_short_budget_tells_a_broken_pipeline_apart(small_scenes, tmp_path, case, expected):
    """The fast end-to-end check on 32 px colour scenes, 120 steps. With every training
    mask moved one image along, trained in stages of 60 and 120 steps: at 60 the control
    is still learning where classes sit, so a clean model could still pull away from it
    (INCONCLUSIVE, not a fault); at 120 it is done, and the broken pipeline is a
    PIPELINE_FAULT while the clean one is HEALTHY. With 30% of the masks moved, the model
    reads content from the rest, but explains its own training pairs less than val
    pairs: a PIPELINE_FAULT without the pair scoring."""
    budget = (
        ["train.iters=auto", "diagnose.first_iters=60", "diagnose.max_iters=120"]
        if case == "broken"
        else ["train.iters=120"]
    )
    result = runner.invoke(
        app,
        [
            "diagnose",
            "dataset=folder",
            f"dataset.root={small_scenes[case]}",
            "dataset.cache_in_memory=true",
            "dataset.transform.crop=[32,32]",
            "dataset.transform.scale=[0.75,1.25]",
            "train.progress=false",
            f"paths.runs={tmp_path}",
            "run_id=d",
            "--no-noise-train",
            "--no-suspects",
            "diagnose.tier1=false",
            *budget,
        ],
    )
    record = json.loads((tmp_path / "d" / "record.json").read_text())
    assert record["verdict"] == expected, record["reasons"]
    assert result.exit_code == {HEALTHY: 0, PIPELINE_FAULT: 1}[expected]
    if case == "broken":
        stages = record["evidence"]["budget"]["stages"]
        assert [s["step"] for s in stages] == [60, 120] and stages[0]["verdict"] == INCONCLUSIVE, stages
        assert "the control is still learning" in stages[0]["reason"]
    if case == "partial":  # measured: about 28% [20%, 36%]
        assert "of the training pairs look misaligned" in record["reasons"][0]
        assert 0.1 < record["evidence"]["misaligned"]["share"]["value"] < 0.4
    elif case == "clean":  # measured: -6% [-10%, -2%]
        assert record["evidence"]["misaligned"]["share"]["low"] < 0.1
