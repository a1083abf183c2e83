"""Every terminal view fits a 100-column terminal without cutting a number or a name short."""

import io
from dataclasses import asdict

import pandas as pd
import pytest
from rich.console import Console

from records import verdict_record
from segaudit.diagnostics.scope import compare_table, scope
from segaudit.report.terminal import (
    compare_rich,
    cross_matrix_table,
    rich_table,
    scope_rich,
    validate_panel,
    verdict_panel,
)
from segaudit.runs.records import COLUMNS
from segaudit.workflows.validate import Gate, generalization_gate


def _render(renderable, width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text().splitlines()


def _stress_table() -> pd.DataFrame:
    """Nothing folds into the caption: 3 datasets, 4 models, 2 seeds, long strategy names."""
    rows = []
    for i, (dataset, model) in enumerate(
        [("cityscapes", "deeplabv3plus"), ("mapillary_v2", "segformer"), ("bdd10k", "pspnet"), ("idd", "unet")] * 3
    ):
        row = dict.fromkeys(COLUMNS)
        row.update(
            run_id=f"retrain-tier2-{model}-{dataset}-s{i % 2}-a1b2c3d4",
            phase="retrain",
            dataset=dataset,
            model=model,
            seed=i % 2,
            strategy="tier2-frozen-encoder",
            train_condition="shuffled",
            eval_condition="real",
            status="completed",
            miou=40.0 + i * 1.37,
            noise_miou=12.5 + i,
            gates=f"{i % 4}/12",
            history=[],
            started_at=f"2026-11-24T00:00:{i:02d}",
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def test_run_table_fits_100_columns_with_every_number_whole():
    table = _stress_table()
    lines = _render(rich_table(table, title="runs"), width=300)  # room to spill over, if it did
    assert max(map(len, lines)) <= 100
    text = "\n".join(lines)
    for value in table.miou:
        assert f"{value:.2f}" in text
    for gates in table.gates:
        assert gates in text
    header = next(line for line in lines if "train/eval" in line)
    assert header.index("data") - header.index("run") >= 22  # run ids keep 22+ characters
    assert "-s0-a1b2c3d4" in text  # ids are cut in the middle: seed and hash stay readable


def test_gates_column_only_when_a_validate_run_is_listed():
    table = _stress_table().assign(gates=None)
    assert "gates" not in "\n".join(_render(rich_table(table), width=100))


def _validate_record() -> dict:
    gates = [Gate("noise input fails", 10.83, "< 0.5 x real = 34.3", True, "mIoU on uniform noise")]
    gates += [
        Gate(f"robust: {name} s{s}", 95.25, "agree>=95% drop<=5", s == 1, "mIoU drop +2.78")
        for name in ("gaussian_noise", "defocus_blur", "brightness", "jpeg_compression")
        for s in (1, 2)
    ]
    gates.append(
        generalization_gate(
            68.57,
            None,
            5.0,
            "no labelled test split (/data/some/very/long/path/to/the/dataset/masks/test does not exist)",
        )
    )
    gates.append(Gate("cross-dataset", 0.73, "std > 10.0", False, "cityscapes 43.8, mapillary_v2 42.7, bdd10k 41.0"))
    return {
        "run_id": "261124-034135-validate-77e0",
        "model": "deeplabv3plus",
        "encoder": "resnet101",
        "dataset": "cityscapes",
        "metrics": {"miou": 68.57},
        "validate": {
            "gates": [asdict(g) | {"result": g.result} for g in gates],
            "source": "/runs/x/checkpoint.pt",
            "source_run": "retrain-tier2-deeplabv3plus",
            "gate_preset": "default",
        },
    }


@pytest.mark.parametrize("name", ["validate", "verdict", "compare", "scope", "matrix"])
def test_views_fit_100_columns_without_cutting_cells(name):
    table = _stress_table()
    renderable = {
        "validate": lambda: validate_panel(_validate_record()),
        "verdict": lambda: verdict_panel(verdict_record()),
        "compare": lambda: compare_rich(
            compare_table(table, "strategy", "tier2-frozen-encoder"), "strategy", "tier2-frozen-encoder"
        ),
        "scope": lambda: scope_rich(scope(table, pd.Series({"strategy_spread_min": 5.0, "dataset_spread_min": 10.0}))),
        "matrix": lambda: cross_matrix_table(
            {
                "retrain-tier2-deeplabv3plus-cityscapes-s0": {
                    "cityscapes": 43.8,
                    "mapillary_v2": 42.7,
                    "bdd10k": float("nan"),
                    "idd": 39.0,
                }
            }
        ),
    }[name]()
    lines = _render(renderable, width=100)
    assert max(map(len, lines)) <= 100
    assert "…" not in "\n".join(lines), "a cell was cut short at 100 columns"
