"""The README is a front door and the manual builds: short, every link lands, and the
generated command reference names every command the app has."""

import re
import subprocess
import sys
from pathlib import Path

import click
import typer

from segaudit.cli import app
from segaudit.cli.reference import command_reference

ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def _command_paths(command: click.Command, prefix: str = "segaudit") -> list[str]:
    paths = [prefix]
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            paths += _command_paths(sub, f"{prefix} {name}")
    return paths


def test_readme_is_short_and_its_links_land():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    links = [m.group(1) for m in LINK.finditer(text) if not m.group(1).startswith("http")]
    assert links and all((ROOT / link).is_file() for link in links), links


def test_every_manual_link_lands():
    for page in (ROOT / "docs").glob("*.md"):
        for match in LINK.finditer(page.read_text()):
            target = match.group(1)
            if target.startswith("http") or target == "reference/commands.md":
                continue
            assert (page.parent / target).is_file(), f"{page.name}: {target}"


def test_the_command_reference_names_every_command_with_its_examples():
    text = command_reference()
    for path in _command_paths(typer.main.get_command(app))[1:]:  # the root is the title
        assert f"`{path}`" in text, path
    assert "[bold]" not in text and "[dim]" not in text  # rich markup became Markdown
    assert "```bash\nsegaudit audit model RUN_ID" in text


def test_mkdocs_builds_strict(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "reference" / "commands" / "index.html").is_file()
    home = (tmp_path / "site" / "index.html").read_text()  # the README, its links made site-relative
    assert "Does your segmentation model read the image?" in home and 'href="reference/commands/"' in home
