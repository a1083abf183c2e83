"""Module-scoped fixtures that train or audit small models, shared by a module's fast
tests and the slow end-to-end tests in tests/e2e/ (loaded by conftest as a plugin)."""

import json
import textwrap

import pandas as pd
import pytest
import segmentation_models_pytorch as smp
import torch
from bs4 import BeautifulSoup
from typer.testing import CliRunner

from expected import audit_exit, read, validate_exit, validate_records
from segaudit.cli import app
from segaudit.cli.common import EXIT_CODES
from segaudit.core.config import compose
from segaudit.models.checkpoints import load_checkpoint, load_trained_model
from segaudit.train.engine import train
from segaudit.workflows.outcomes import VERDICT_OUTCOMES as OUTCOMES

runner = CliRunner()


FACTORY = """
import segmentation_models_pytorch as smp
import torch
from torch import nn


def build():
    return smp.Unet("resnet18", encoder_weights=None, classes=8)


class Bgr255(nn.Module):
    '''Takes BGR images in 0..255, as an OpenCV-based pipeline feeds them.'''

    def __init__(self):
        super().__init__()
        self.net = build()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x):
        return self.net((x.flip(1) / 255 - self.mean) / self.std)


def build_bgr255():
    return Bgr255()
"""


@pytest.fixture(scope="module")
def native(tmp_path_factory, synth_root):
    """A tiny trained U-Net (60 iterations: well over the prior, no red flag), its native
    audit, and the overrides that reach its data."""
    base = tmp_path_factory.mktemp("sources")
    runs_root = base / "runs"
    tiny = [
        "dataset=folder",
        f"dataset.root={synth_root}",
        "dataset.transform.crop=[32,32]",
        "dataset.cache_in_memory=true",
        "train.iters=60",
        "train.batch_size=4",
        "train.eval_batch_size=8",
        "train.progress=false",
        f"paths.runs={runs_root}",
        f"paths.cache={base / 'cache'}",
    ]
    train(compose(tiny + ["model=unet", "run_id=native"]))
    done = runner.invoke(app, ["audit", "model", "native", *tiny, "run_id=native-audit"])
    assert done.exit_code == 0, done.output
    record = json.loads((runs_root / "native-audit" / "record.json").read_text())
    assert record["audit"]["red_flags"] == [] and record["audit"]["probe"] is None
    ckpt = load_checkpoint(runs_root / "native" / "checkpoint.pt")
    model, _ = load_trained_model(ckpt, runs_root / "native" / "checkpoint.pt")
    (base / "pkg").mkdir()
    (base / "pkg" / "segaudit_test_factory.py").write_text(textwrap.dedent(FACTORY))
    return {"tiny": tiny, "runs": runs_root, "base": base, "model": model.eval(), "miou": record["audit"]["miou"]}


@pytest.fixture(scope="module")
def inventory(tmp_path_factory, synth_root):
    """Six smp folders (two strategies), a missing file and a five-class model."""
    base = tmp_path_factory.mktemp("inventory")
    rows = []
    for index in range(6):
        torch.manual_seed(index)
        smp.Unet("resnet18", encoder_weights=None, classes=8).save_pretrained(base / "models" / f"m{index}")
        rows.append(
            {
                "source": f"models/m{index}",
                "strategy": "ab"[index % 2],
                "model": "unet",
                "dataset": "folder",
                "root": str(synth_root),
            }
        )
    smp.Unet("resnet18", encoder_weights=None, classes=5).save_pretrained(base / "models" / "five")
    rows += [
        {"source": "models/gone", "strategy": "a", "model": "unet", "dataset": "folder", "root": str(synth_root)},
        {"source": "models/five", "strategy": "a", "model": "unet", "dataset": "folder", "root": str(synth_root)},
    ]
    pd.DataFrame(rows).to_csv(base / "models.csv", index=False)
    shared = [
        f"paths.runs={base / 'runs'}",
        f"paths.cache={base / 'cache'}",
        "train.eval_batch_size=8",
        "dataset.cache_in_memory=true",
        "audit.probe=false",
    ]
    return base, shared


@pytest.fixture(scope="module")
def reported(tmp_path_factory, synth_root):
    """A tiny diagnose (pair scoring on), a validate of its baseline, a run whose strategy
    is markup, its audit, and the page `report html` writes for them."""
    base = tmp_path_factory.mktemp("html")
    runs = base / "runs"
    tiny = [
        "dataset=folder",
        f"dataset.root={synth_root}",
        "dataset.transform.crop=[32,32]",
        "dataset.cache_in_memory=true",
        "train.iters=2",
        "train.batch_size=2",
        "train.eval_batch_size=8",
        "train.progress=false",
        f"paths.runs={runs}",
        f"paths.cache={base / 'cache'}",
    ]
    diagnosed = runner.invoke(app, ["diagnose", *tiny, "run_id=diag", "suspects.iters=2"])
    gate = json.loads((runs / "diag" / "record.json").read_text())
    assert diagnosed.exit_code == EXIT_CODES[OUTCOMES[gate["verdict"]]], diagnosed.output
    validated = runner.invoke(
        app,
        [
            "validate",
            "diag",
            *tiny,
            "gate.validate.robustness.severities=[1]",
            "gate.validate.robustness.corruptions=[gaussian_noise]",
        ],
    )
    assert validated.exit_code == validate_exit(validate_records(runs)), validated.output
    marked = runner.invoke(app, ["train", *tiny, "strategy='<script>alert(1)</script>'", "run_id=marked"])
    assert marked.exit_code == 0, marked.output
    audited = runner.invoke(app, ["audit", "model", "marked", *tiny, "run_id=aud"])
    assert audited.exit_code == audit_exit(read(runs, "aud")), audited.output
    page = base / "out" / "report.html"
    before = {p: p.read_bytes() for p in runs.rglob("*") if p.is_file()}
    result = runner.invoke(app, ["report", "html", str(page), f"paths.runs={runs}"])
    assert result.exit_code == 0, result.output
    assert f"wrote {page}" in result.stderr and "diag " in result.stderr
    after = {p: p.read_bytes() for p in runs.rglob("*") if p.is_file()}
    return {
        "runs": runs,
        "tiny": tiny,
        "page": page,
        "gate": gate,
        "result": result,
        "unchanged": before == after,
        "soup": BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser"),
    }


def audit_source(native, source, *extra, monkeypatch=None):
    run_id = f"audit-{abs(hash((str(source), extra)))}"
    done = runner.invoke(app, ["audit", "model", str(source), *native["tiny"], f"run_id={run_id}", *extra])
    record = read(native["runs"], run_id)
    assert done.exit_code == audit_exit(record), done.output  # exit 1: a red flag
    return record


def same_miou(measured: dict, expected: dict, tol: float) -> None:
    for condition, value in expected.items():
        assert measured[condition] == pytest.approx(value, abs=tol), condition


def tiny_segformer(num_labels: int, width: int = 8, names: list[str] | None = None):
    """A random-config Hugging Face SegFormer (nothing downloaded): four one-block stages
    of width, 2x, 3x and 4x width channels, classes named by `names` when given."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    labels = {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}} if names else {}
    config = SegformerConfig(
        num_labels=num_labels,
        num_encoder_blocks=4,
        depths=[1, 1, 1, 1],
        hidden_sizes=[width, 2 * width, 3 * width, 4 * width],
        num_attention_heads=[1, 1, 1, 1],
        sr_ratios=[8, 4, 2, 1],
        decoder_hidden_size=4 * width,
        **labels,
    )
    return SegformerForSemanticSegmentation(config)
