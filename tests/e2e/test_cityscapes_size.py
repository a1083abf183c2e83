"""Train, audit, pair scoring, class table, HTML report and TensorBoard on Cityscapes'
official layout at the real 1024x2048 (minutes: `slow`)."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from expected import audit_exit, read, suspects_exit
from segaudit.cli import app
from segaudit.core.config import compose, load_group_option
from segaudit.data import build_dataset, eval_loader
from segaudit.measure.evaluation import evaluate
from segaudit.models.checkpoints import load_for_eval
from segaudit.models.inference import Inference
from segaudit.runs.records import load_table

runner = CliRunner()


@pytest.mark.slow
def test_cityscapes_end_to_end_at_1024x2048_whole_and_slide(cityscapes_root, tmp_path):
    """data check -> prior -> train (crops of 512x1024) -> audit with whole and slide."""
    runs = tmp_path / "runs"
    common = ["dataset=cityscapes", f"dataset.root={cityscapes_root}", f"paths.runs={runs}"]
    check = subprocess.run(
        [sys.executable, "-m", "segaudit.cli", "data", "check", *common], capture_output=True, text=True
    )
    assert check.returncode == 0 and "2048x1024" in check.stdout, check.stderr
    assert runner.invoke(app, ["prior", *common, "run_id=prior"]).exit_code == 0
    trained = runner.invoke(
        app,
        [
            "train",
            *common,
            "dataset.transform.crop=[512,1024]",
            "train.iters=2",
            "train.batch_size=2",
            "train.eval_batch_size=1",
            "train.progress=false",
            "run_id=cs",
        ],
    )
    assert trained.exit_code == 0, trained.output
    record = json.loads((runs / "cs" / "record.json").read_text())
    prior = json.loads((runs / "prior" / "record.json").read_text())
    for mode, extra in (("whole", []), ("slide", ["inference.mode=slide"])):
        result = runner.invoke(
            app,
            ["audit", "model", "cs", f"paths.runs={runs}", "train.eval_batch_size=1", f"run_id=audit-{mode}", *extra],
        )
        assert result.exit_code == audit_exit(read(runs, f"audit-{mode}")), result.output
        audit = read(runs, f"audit-{mode}")["audit"]
        assert audit["inference"]["mode"] == mode
        assert audit["prior_miou"] == pytest.approx(prior["metrics"]["miou"])
        if mode == "whole":  # the training run's own evaluation, repeated exactly
            assert audit["miou"]["real"] == pytest.approx(record["metrics"]["miou"])
        else:  # the same sliding windows run by hand over the same checkpoint and labels
            assert audit["inference"]["crop"] == [512, 1024] and audit["inference"]["stride"] == [341, 683]
            model = load_for_eval(compose([f"paths.runs={runs}"]), "cs", torch.device("cpu"))
            dcfg = model.saved.dataset
            windows = Inference("slide", multiple=16, crop=(512, 1024), stride=(341, 683))
            by_hand = evaluate(
                model.model,
                eval_loader(build_dataset(dcfg, "val", train=False), 1),
                19,
                255,
                torch.device("cpu"),
                infer=windows,
            )
            assert audit["miou"]["real"] == pytest.approx(by_hand["miou"], nan_ok=True)


@pytest.mark.slow
def test_suspects_and_class_table_on_cityscapes_at_1024x2048(cityscapes_root, tmp_path):
    """Cross-fitting at full size: 3 train + 2 val pairs scored at 1024x2048 (about a minute)."""
    runs = tmp_path / "runs"
    common = [
        "dataset=cityscapes",
        f"dataset.root={cityscapes_root}",
        f"paths.runs={runs}",
        "train.progress=false",
        "dataset.transform.crop=[256,512]",
        "train.batch_size=2",
    ]
    result = runner.invoke(app, ["suspects", *common, "train.iters=2", "--format", "json"])
    assert result.exit_code == suspects_exit(runs, load_group_option("gate", "default").suspects_max_share), (
        result.output
    )
    pairs = json.loads(result.stdout)
    assert sorted(p["split"] for p in pairs) == ["train"] * 3 + ["val"] * 2
    assert all("/" in p["stem"] and 0 <= p["own_fit"] <= 100 for p in pairs)  # city/stem
    fold = next(r for r in load_table(runs).itertuples() if r.strategy == "crossfit-1of2")
    classes = runner.invoke(app, ["report", "classes", fold.run_id, "--format", "json", *common])
    assert classes.exit_code == 0, classes.output
    rows = json.loads(classes.stdout)
    assert len(rows) == 19 and sum(r["train_share"] for r in rows) == pytest.approx(100.0)


@pytest.mark.slow
def test_html_report_and_tensorboard_at_1024x2048(cityscapes_root, tmp_path):
    """A Cityscapes-size run logged to TensorBoard (its sample grid drawn at 1024x2048),
    audited, and put on one page with its audit row."""
    from bs4 import BeautifulSoup
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = tmp_path / "runs"
    common = [
        "dataset=cityscapes",
        f"dataset.root={cityscapes_root}",
        f"paths.runs={runs}",
        "train.progress=false",
        "train.eval_batch_size=1",
    ]
    trained = runner.invoke(
        app,
        [
            "train",
            *common,
            "dataset.transform.crop=[512,1024]",
            "train.iters=2",
            "train.batch_size=2",
            "train.log_every=1",
            "logger=tensorboard",
            "run_id=cs",
        ],
    )
    assert trained.exit_code == 0, trained.output
    record = json.loads((runs / "cs" / "record.json").read_text())
    events = EventAccumulator(str(runs / "cs" / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("real/miou")] == pytest.approx([record["metrics"]["miou"]], abs=1e-4)
    assert events.Images("samples")[0].width > 200
    audited = runner.invoke(app, ["audit", "model", "cs", *common, "run_id=audit-cs"])
    assert audited.exit_code == audit_exit(read(runs, "audit-cs")), audited.output
    page = tmp_path / "report.html"
    result = runner.invoke(app, ["report", "html", str(page), f"paths.runs={runs}"])
    assert result.exit_code == 0, result.output
    assert page.stat().st_size < 3_000_000
    soup = BeautifulSoup(page.read_text(), "html.parser")
    assert {r.find("td").get_text(strip=True) for r in soup.select("#runs tbody tr")} == {"cs", "audit-cs"}
    audit = json.loads((runs / "audit-cs" / "record.json").read_text())["audit"]
    cells = [td.get_text(strip=True) for td in soup.select_one('tr[data-audit="audit-cs"]').find_all("td")]
    assert cells[2] == f"{audit['miou']['real']:.2f}" and cells[-2] == f"{audit['content_gain']:+.2f}"
