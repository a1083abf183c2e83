"""Fuzzing what files bring in (Hypothesis): a model card, a `dataset.yaml`, an inventory
CSV and a prediction PNG, whatever they hold, give a result or one line of refusal (a
`SegauditError`, the CLI's exit 2): never another exception, never an environment value in
the message, never a file written beside them. `make test` runs a few dozen examples of
each; `make test-full` (the `slow` marker) runs 250."""

import os
import string
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from scenes import with_dataset_yaml
from segaudit.core.config import compose
from segaudit.core.errors import SegauditError
from segaudit.data import prepare_dataset
from segaudit.models.sources import ModelCard, read_card_file
from segaudit.workflows.inventory import COLUMNS, plan_inventory
from segaudit.workflows.predictions import _read_prediction

SECRET = "fuzz-secret-5d1c"
os.environ["SEGAUDIT_FUZZ_SECRET"] = SECRET
HOSTILE = [
    "${oc.env:SEGAUDIT_FUZZ_SECRET}",
    '=HYPERLINK("x")',
    "*a",
    "&a x",
    "1e308",
    ".nan",
    "yes",
    "/dev/zero",
    "../../etc",
    "'",
    '"',
    ",",
    "\n",
    "-1",
    "255",
    "cityscapes_label_ids",
]
CARD_FIELDS = [
    "mean",
    "std",
    "input_range",
    "channels",
    "output",
    "upsample",
    "class_map",
    "input_size",
    "factory",
    "unknown",
]

texts = st.one_of(st.text(string.printable, max_size=12), st.sampled_from(HOSTILE))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=True, allow_infinity=True), texts
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=3), max_leaves=10
)
yaml_files = st.one_of(
    st.dictionaries(st.sampled_from(CARD_FIELDS), values, max_size=5).map(lambda d: yaml.safe_dump(d)),
    st.text(max_size=200),  # anything at all, aliases and tabs included
    st.sampled_from(["a: &x [1, 2]\nb: *x\n", "mean: [1, 2, 3]\nstd: [0, 1, 1]\n", "- 1\n- 2\n"]),
)
BUDGETS = [25, pytest.param(250, marks=pytest.mark.slow)]


def _one_line_refusal(err: SegauditError) -> None:
    message = str(err)
    assert message and "\n" not in message.strip() and SECRET not in message


def _fuzz(budget: int):
    return settings(
        max_examples=budget,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@pytest.mark.parametrize("budget", BUDGETS)
def test_any_model_card_is_read_or_refused_in_one_line(budget):
    @_fuzz(budget)
    @given(text=yaml_files)
    def check(text):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "m.card.yaml"
            path.write_text(text)
            try:
                card = read_card_file(path)
            except SegauditError as err:
                _one_line_refusal(err)
            else:
                assert isinstance(card, ModelCard) and SECRET not in repr(card)
            assert sorted(p.name for p in Path(folder).iterdir()) == ["m.card.yaml"]

    check()


@pytest.mark.parametrize("budget", BUDGETS)
def test_any_dataset_yaml_is_read_or_refused_in_one_line(budget, synth_root):
    keys = st.sampled_from(["num_classes", "class_names", "ignore_index", "class_colors", "other"])
    metas = st.one_of(st.dictionaries(keys, values, max_size=4).map(lambda d: yaml.safe_dump(d)), st.text(max_size=120))

    @_fuzz(budget)
    @given(text=metas)
    def check(text):
        with tempfile.TemporaryDirectory() as folder:
            root = with_dataset_yaml(synth_root, Path(folder) / "data", text.encode())
            dcfg = compose(["dataset=folder", f"dataset.root={root}"]).dataset
            try:
                prepared = prepare_dataset(dcfg, Path(folder) / "cache")
            except SegauditError as err:
                _one_line_refusal(err)
            else:
                assert SECRET not in yaml.safe_dump(list(prepared.class_names))
            assert sorted(p.name for p in root.iterdir()) == ["dataset.yaml", "images", "masks"]

    check()


@pytest.mark.parametrize("budget", BUDGETS)
def test_any_inventory_csv_plans_rows_or_refuses_in_one_line(budget):
    cells = st.one_of(texts, st.text(max_size=20))
    tables = st.lists(st.dictionaries(st.sampled_from(COLUMNS), cells, min_size=1, max_size=5), min_size=1, max_size=4)

    @_fuzz(budget)
    @given(rows=tables)
    def check(rows):
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "model.pt").write_bytes(b"x")
            csv = Path(folder) / "models.csv"
            pd.DataFrame(rows).to_csv(csv, index=False)
            try:
                planned = plan_inventory(csv, [])
            except SegauditError as err:
                _one_line_refusal(err)
            else:
                for row in planned:
                    assert row.error is None or ("\n" not in row.error and SECRET not in row.error)
                    assert row.run is None or SECRET not in " ".join(row.run.overrides)
            assert sorted(p.name for p in Path(folder).iterdir()) == ["model.pt", "models.csv"]

    check()


@pytest.mark.parametrize("budget", BUDGETS)
def test_any_prediction_png_is_scored_or_refused_in_one_line(budget):
    shapes = st.tuples(st.integers(1, 9), st.integers(1, 9)) | st.tuples(
        st.integers(1, 6), st.integers(1, 6), st.sampled_from([3, 4])
    )
    pictures = shapes.flatmap(lambda shape: arrays(np.uint8, shape))

    @_fuzz(budget)
    @given(labels=pictures, size=st.tuples(st.integers(1, 9), st.integers(1, 9)))
    def check(labels, size):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "p.png"
            Image.fromarray(labels).save(path)
            try:
                read = _read_prediction(path, size, 8)
            except SegauditError as err:
                _one_line_refusal(err)
            else:
                assert tuple(read.shape) == size and int(read.max()) < 8

    check()
