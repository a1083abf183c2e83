"""MkDocs hook: the pages generated at every build, so they cannot drift: the home page from
the README (its `docs/` links made relative to the site) and the command reference from
the Typer app (`reference/commands.md`)."""

from pathlib import Path

from mkdocs.structure.files import File

from segaudit.cli.reference import command_reference

README = Path(__file__).resolve().parents[2] / "README.md"


def home_page() -> str:
    """The README as the site's home page."""
    text = README.read_text(encoding="utf-8").replace("](docs/", "](")
    return text.replace(
        "The command reference is generated from the app (`make docs`, then `site/reference/commands/`);",
        "The [command reference](reference/commands.md) is generated from the app;",
    )


def on_files(files, config):
    files.append(File.generated(config, "index.md", content=home_page()))
    files.append(File.generated(config, "reference/commands.md", content=command_reference()))
    return files
