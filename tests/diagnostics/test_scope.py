"""`segaudit scope` against pandas on a table with known group statistics."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from segaudit.cli import app

runner = CliRunner()


@pytest.fixture
def results(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for strategy, offset in [("baseline", 0.0), ("photometric", 0.1), ("stargan_v2", -0.1)]:
        for model in ("deeplabv3plus", "pspnet", "segformer"):
            for dataset, base in [("bdd10k", 45.4), ("idd_aw", 40.2), ("mapillary", 35.5)]:
                rows.append(
                    {
                        "strategy": strategy,
                        "model": model,
                        "dataset": dataset,
                        "miou": base + offset + rng.normal(0, 0.5),
                        "extra": "ignored",
                    }
                )
    path = tmp_path / "results.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_json_matches_pandas_groupby(results):
    result = runner.invoke(app, ["scope", "--table", str(results), "--format", "json"])
    assert result.exit_code == 1, result.output  # strategies are all the same: flagged
    got = json.loads(result.stdout)
    frame = pd.read_csv(results)
    for name in ("strategy", "model", "dataset"):
        expected = frame.groupby(name)["miou"].agg(["count", "mean", "std"])
        groups = {g["name"]: g for g in got["groupings"][name]["groups"]}
        assert set(groups) == set(expected.index)
        for index, row in expected.iterrows():
            assert groups[index]["count"] == row["count"]
            assert groups[index]["mean"] == pytest.approx(row["mean"])
            assert groups[index]["std"] == pytest.approx(row["std"])
        assert got["groupings"][name]["spread"] == pytest.approx(expected["mean"].std(ddof=1))
    assert got["groupings"]["strategy"]["flag"] is True  # spread ~0.1 < 5
    assert got["groupings"]["dataset"]["flag"] is True  # spread ~5 < 10
    assert got["systematic"] is True and got["runs"] == 27


def test_varied_results_are_not_flagged(tmp_path):
    frame = pd.DataFrame(
        {
            "strategy": ["a", "a", "b", "b"],
            "model": ["m"] * 4,
            "dataset": ["x", "y", "x", "y"],
            "miou": [20.0, 50.0, 40.0, 75.0],
        }
    )
    path = tmp_path / "r.parquet"
    frame.to_parquet(path)
    result = runner.invoke(app, ["scope", "--table", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["groupings"]["strategy"]["spread"] == pytest.approx(np.std([35.0, 57.5], ddof=1))
    assert got["systematic"] is False


def test_table_and_markdown_render(results):
    table = runner.invoke(app, ["scope", "--table", str(results)])
    assert "by strategy" in table.stdout and "suspiciously uniform" in table.stdout
    md = runner.invoke(app, ["scope", "--table", str(results), "--format", "md"])
    assert "| strategy" in md.stdout and "systematic problem flagged: True" in md.stdout


def test_bad_tables_are_one_line_errors(tmp_path):
    path = tmp_path / "r.csv"
    pd.DataFrame({"strategy": ["a"], "miou": [1.0]}).to_csv(path, index=False)
    for args, expected in [
        (["--table", str(path)], "missing column(s) model, dataset"),
        (["--table", str(tmp_path / "none.csv")], "file not found"),
        (["--format", "xml"], "--format xml"),
    ]:
        result = runner.invoke(app, ["scope", *args, f"paths.runs={tmp_path}"])
        assert result.exit_code == 2 and expected in result.stderr, result.output
