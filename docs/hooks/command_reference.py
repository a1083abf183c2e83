"""MkDocs hook: add the generated command reference (`reference/commands.md`) to the site."""

from mkdocs.structure.files import File

from segaudit.cli.reference import command_reference


def on_files(files, config):
    files.append(File.generated(config, "reference/commands.md", content=command_reference()))
    return files
