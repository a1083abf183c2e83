"""Pictures: every --plots writes valid, non-blank PNGs that show what they claim."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from expected import audit_exit, read
from segaudit.cli import app
from segaudit.cli.common import EXIT_CODES
from segaudit.core.config import compose
from segaudit.train.engine import train
from segaudit.train.samples import class_colors, sample_grid
from segaudit.workflows.outcomes import VERDICT_OUTCOMES as OUTCOMES

runner = CliRunner()


def _kind(path) -> str:
    """`samples_261124-...-baseline.png` -> `samples`, `prior_03_sky.png` -> `prior`."""
    return re.sub(r"(_\d.*)?\.png$", "", Path(path).name)


def _picture(path) -> np.ndarray:
    with Image.open(path) as image:
        image.verify()  # a complete, valid PNG
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def _not_blank(path) -> np.ndarray:
    picture = _picture(path)
    assert picture.shape[0] > 100 and picture.shape[1] > 100
    assert picture.std() > 5, f"{path} is blank"
    return picture


def test_sample_grid_draws_each_class_in_its_colour(tmp_path):
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 1
    mask[:4] = 255  # ignore, drawn black
    sample = {
        "image": np.full((32, 32, 3), 200, np.uint8),
        "mask": mask,
        "pred_real": mask.copy(),
        "pred_noise": np.full((32, 32), 2),
    }
    colors = [[255, 0, 0], [0, 0, 255], [0, 255, 0]]
    path = sample_grid([sample, sample], ["a", "b", "c"], 255, tmp_path / "grid.png", "t", colors)
    picture = _not_blank(path)
    flat = picture.reshape(-1, 3)
    for rgb in (*colors, [0, 0, 0]):  # every class colour and the ignore black appear
        assert (np.abs(flat.astype(int) - rgb).sum(1) < 10).sum() > 100, rgb


def test_palette_has_an_ignore_colour():
    palette = class_colors(25)
    assert palette.shape == (26, 3) and (palette[-1] == 0).all()
    assert len({tuple(c) for c in palette[:25]}) == 25  # distinct class colours


def test_audit_and_diagnose_plots(tiny, runs_root, tmp_path):
    train(compose(tiny + ["run_id=model", "eval_also=[noise]"]))
    audited = runner.invoke(
        app, ["audit", "model", "model", *tiny, "run_id=0-audit", "--plots", str(tmp_path / "audit")]
    )
    assert audited.exit_code == audit_exit(read(runs_root, "0-audit")), audited.output
    assert sorted(map(_kind, (tmp_path / "audit").glob("*.png"))) == ["miou_by_condition", "samples"]
    grid = _not_blank(next((tmp_path / "audit").glob("samples_*.png")))
    assert grid.shape[0] > grid.shape[1] * 0.8  # four sample rows under the column titles

    out = tmp_path / "diagnose"
    result = runner.invoke(app, ["diagnose", *tiny, "--no-suspects", "--plots", str(out)])
    gate = _exit_code_follows_the_verdict(result, runs_root)
    assert sorted(gate["plots"]) == sorted(map(str, out.glob("*.png")))  # the record lists them
    assert sorted(map(_kind, out.glob("*.png"))) == [
        "classes",
        "curve",
        "evidence",
        "learning_curves",
        *["prior"] * 8,
        "prior_all",
        "samples",
    ]
    for png in out.glob("*.png"):
        _not_blank(png)


def _exit_code_follows_the_verdict(result, runs_root):
    """2-iteration models may get any verdict; the exit code must be the verdict's."""
    gate = next(
        r for r in map(lambda p: json.loads(p.read_text()), runs_root.glob("*/record.json")) if r.get("verdict")
    )
    assert result.exit_code == EXIT_CODES[OUTCOMES[gate["verdict"]]], result.output
    return gate


@pytest.mark.slow  # a second diagnose; test_audit_and_diagnose_plots draws the same kinds
def test_report_plots_draw_every_kind_after_a_diagnose(tiny, runs_root, tmp_path):
    result = runner.invoke(app, ["diagnose", *tiny, "--no-noise-train", "--no-suspects", "diagnose.tier1=false"])
    _exit_code_follows_the_verdict(result, runs_root)
    out = tmp_path / "report"
    report = runner.invoke(app, ["report", *tiny, "--plots", str(out)])
    assert report.exit_code == 0, report.output
    kinds = set(map(_kind, out.rglob("*.png")))
    assert {"evidence", "learning_curves", "miou_by_condition", "samples", "prior_all"} <= kinds
    for png in out.rglob("*.png"):
        _not_blank(png)


def test_prior_plots_via_cli(tiny, tmp_path):
    result = runner.invoke(app, ["prior", *tiny, "--plots", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    overview = _not_blank(tmp_path / "p" / "prior_all.png")
    assert overview.shape[1] > overview.shape[0]  # 4 columns x 2 rows of classes
