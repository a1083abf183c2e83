"""Pictures: every --plots writes valid, non-blank PNGs that show what they claim."""

import numpy as np
from drawn import kind, not_blank
from typer.testing import CliRunner

from expected import audit_exit, exit_code_follows_the_verdict, read
from segaudit.cli import app
from segaudit.core.config import compose
from segaudit.train.engine import train
from segaudit.train.samples import class_colors, sample_grid

runner = CliRunner()


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
    picture = not_blank(path)
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
    assert sorted(map(kind, (tmp_path / "audit").glob("*.png"))) == ["miou_by_condition", "samples"]
    grid = not_blank(next((tmp_path / "audit").glob("samples_*.png")))
    assert grid.shape[0] > grid.shape[1] * 0.8  # four sample rows under the column titles

    out = tmp_path / "diagnose"
    result = runner.invoke(app, ["diagnose", *tiny, "--no-suspects", "--plots", str(out)])
    gate = exit_code_follows_the_verdict(result, runs_root)
    assert sorted(gate["plots"]) == sorted(map(str, out.glob("*.png")))  # the record lists them
    assert sorted(map(kind, out.glob("*.png"))) == [
        "classes",
        "curve",
        "evidence",
        "learning_curves",
        *["prior"] * 8,
        "prior_all",
        "samples",
    ]
    for png in out.glob("*.png"):
        not_blank(png)


def test_prior_plots_via_cli(tiny, tmp_path):
    result = runner.invoke(app, ["prior", *tiny, "--plots", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    overview = not_blank(tmp_path / "p" / "prior_all.png")
    assert overview.shape[1] > overview.shape[0]  # 4 columns x 2 rows of classes
