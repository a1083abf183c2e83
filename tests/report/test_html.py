"""`segaudit report html`: one self-contained page, read back with a real HTML parser."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from bs4 import BeautifulSoup
from PIL import Image
from typer.testing import CliRunner

from segaudit.cli import app
from segaudit.report.html import png_data_uri, verdict_summary
from segaudit.report.terminal import evidence_frame

runner = CliRunner()
# Attributes through which a page could fetch or send something.
URL_ATTRIBUTES = ("href", "src", "srcset", "action", "formaction", "poster", "data", "background", "xlink:href")


def _records(runs: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in runs.glob("*/record.json")]


def test_the_report_reads_the_runs_folder_and_writes_nothing_there(reported):
    assert reported["unchanged"]  # pictures are drawn in a temp folder; no record lists them


def test_page_shows_the_verdict_in_plain_words(reported):
    soup, gate = reported["soup"], reported["gate"]
    verdict = soup.select_one("#verdict-diag .name")
    assert verdict["data-verdict"] == gate["verdict"] and verdict.get_text(strip=True) == gate["verdict"]
    box = soup.select_one("#verdict-diag")
    assert f"{gate['evidence']['prior']:.1f}" in box.get_text()  # the prior, named and explained
    assert "analytic prior" in box.get_text() and box.select("ol.next li"), "no next steps"


def test_every_evidence_row_is_there_with_its_number_and_the_prior_line(reported):
    soup, gate = reported["soup"], reported["gate"]
    rows = soup.select("#diagnose-diag table.evidence tbody tr")
    expected = [
        (row.step, None if np.isnan(row.miou) else row.miou, row.run_id)
        for row in evidence_frame(gate).itertuples(index=False)
    ]
    assert [r["data-step"] for r in rows] == [label for label, _, _ in expected]
    prior_x = f"{gate['evidence']['prior'] * 2.6:.1f}"
    for row, (label, value, run) in zip(rows, expected):
        cells = row.find_all("td")
        assert cells[1].get_text(strip=True) == ("skipped" if value is None else f"{value:.2f}"), label
        assert cells[3].get_text(strip=True) == (run or "")
        if value is not None:  # each bar carries the prior as its reference line
            assert row.find("line")["x1"] == prior_x


def test_every_gate_row_is_there_with_pass_fail_skip(reported):
    soup = reported["soup"]
    validate = next(r for r in _records(reported["runs"]) if r["phase"] == "validate")
    shown = {
        row["data-gate"]: row.find_all("td")[3].get_text(strip=True)
        for row in soup.select("#gates table.gates tbody tr")
    }
    assert shown == {g["name"]: g["result"] for g in validate["validate"]["gates"]}
    assert set(shown.values()) <= {"PASS", "FAIL", "SKIP"}


def test_pictures_are_embedded_pngs_that_decode(reported):
    images = reported["soup"].find_all("img")
    assert len(images) >= 4  # evidence, samples, learning curves, prior overview (and classes)
    for img in images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix) :]))).convert("L"))
        assert picture.shape[0] > 100 and picture.std() > 5, img.get("alt")  # drawn, not blank


def test_nothing_points_outside_the_file(reported):
    soup = reported["soup"]
    assert not soup.find_all("link") and not soup.find_all("iframe")
    assert all(not script.get("src") for script in soup.find_all("script"))
    for tag in soup.find_all(True):
        for attribute in URL_ATTRIBUTES:
            value = tag.get(attribute)
            if value is not None:
                assert value.startswith(("#", "data:")), f"<{tag.name} {attribute}={value[:60]!r}>"
    assert "url(" not in " ".join(style.get_text() for style in soup.find_all("style"))
    assert "@import" not in reported["page"].read_text()


def test_audits_show_each_input_against_the_prior(reported):
    audit = next(r for r in _records(reported["runs"]) if r["phase"] == "audit")["audit"]
    soup = reported["soup"]
    headers = [th.get_text(strip=True) for th in soup.select("#audits thead th")]
    cells = [td.get_text(strip=True) for td in soup.select_one('tr[data-audit="aud"]').find_all("td")]
    shown = dict(zip(headers, cells))
    assert {name: shown[name] for name in audit["miou"]} == {
        name: "-" if value is None else f"{value:.2f}" for name, value in audit["miou"].items()
    }
    assert shown["prior"] == f"{audit['prior_miou']:.2f}" and shown["content gain"] == f"{audit['content_gain']:+.2f}"
    assert (shown["red flags"] == "none") == (not audit["red_flags"])


def test_run_table_provenance_and_markup_shown_as_text(reported):
    soup, records = reported["soup"], _records(reported["runs"])
    rows = soup.select("#runs tbody tr")
    assert sorted(r.find("td").get_text(strip=True) for r in rows) == sorted(r["run_id"] for r in records)
    baseline = reported["gate"]["steps"]["baseline"]
    details = soup.select_one(f"#run-{baseline}")
    step = next(r for r in records if r["run_id"] == baseline)
    assert step["command"] in details.get_text() and f"torch {step['versions']['torch']}" in details.get_text()
    assert "encoder: resnet18" in details.pre.get_text()  # the resolved config, as run
    # A strategy that is markup is shown as text: no script but the page's own sorter.
    assert [s.get_text()[:30] for s in soup.find_all("script")] == ["\n// Sort the run table by the "]
    marked = next(r for r in rows if r.find("td").get_text(strip=True) == "marked")
    assert "<script>alert(1)</script>" in marked.get_text()


def test_one_diagnose_selects_its_steps_and_gates(reported, tmp_path):
    page = tmp_path / "d.html"
    result = runner.invoke(app, ["report", "html", str(page), f"paths.runs={reported['runs']}", "--diagnose", "diag"])
    assert result.exit_code == 0, result.output
    soup = BeautifulSoup(page.read_text(), "html.parser")
    shown = {r.find("td").get_text(strip=True) for r in soup.select("#runs tbody tr")}
    assert "marked" not in shown and "diag" in shown and set(reported["gate"]["steps"].values()) <= shown
    assert soup.select("#gates table.gates")  # the validate of its baseline comes along


def test_runs_without_a_diagnose_say_so(reported, tmp_path):
    page = tmp_path / "t.html"
    result = runner.invoke(
        app, ["report", "html", str(page), f"paths.runs={reported['runs']}", "--where", "run_id=marked"]
    )
    assert result.exit_code == 0, result.output
    soup = BeautifulSoup(page.read_text(), "html.parser")
    assert "No diagnose among these 1 runs" in soup.select_one("#summary").get_text(" ", strip=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/r.txt"], "expected a .html file name"),
        (["{tmp}/r.html", "--diagnose", "nope"], "no diagnose with that id"),
        (["{tmp}/r.html", "--where", "phase=nothing"], "no runs to report"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(reported, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(app, ["report", "html", *args, f"paths.runs={reported['runs']}"])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "name, first_command, style",
    [
        ("HEALTHY", "segaudit validate d", "good"),
        ("PIPELINE_FAULT", "segaudit suspects --diagnose d", "bad"),
        ("SPATIAL_SHORTCUT", "segaudit retrain retrain.from_gate=d", "warn"),
    ],
)
def test_each_verdict_says_what_it_means_and_what_to_do(name, first_command, style):
    record = {
        "run_id": "d",
        "verdict": name,
        "reasons": ["the reason"],
        "steps": {"baseline": "b"},
        "evidence": {"prior": 30.0, "real": 40.0, "shuffled": 31.0, "suspect_flagged": 5},
        "gate": {
            "preset": "default",
            "decision": "2A",
            "why": "tier-1 within range",
            "next_checks": ["look at the sort order"],
        },
    }
    summary = verdict_summary(record)
    assert summary["style"] == style and "30.0" in summary["meaning"][0] and "40.0" in summary["meaning"][0]
    assert [s["command"] for s in summary["next_steps"] if s["command"]] == [first_command]
    if name == "PIPELINE_FAULT":  # the data checks follow the suspects listing
        assert summary["next_steps"][1]["text"] == "look at the sort order"


def test_png_data_uri_refuses_what_is_not_a_png(tmp_path):
    fake = tmp_path / "x.png"
    fake.write_bytes(b"<svg onload=alert(1)>")
    with pytest.raises(Exception, match="not a PNG"):
        png_data_uri(fake)
