"""Files are data, never instructions: how segaudit reads what a file brings in.

A dataset's `dataset.yaml`, a model card, an inventory CSV, a run folder's `config.yaml`
and a checkpoint's config can all come from someone else (a shared runs folder, a
downloaded model). Read through here, such a file
- never interpolates: a `${...}` would be resolved by OmegaConf once the value lands in a
  config, and `${oc.env:NAME}` copies an environment variable into records, exports, HTML
  pages and tracker params; it is refused with one line naming the file and key;
- never expands: YAML aliases (`*name`, the "billion laughs" bomb) are refused, and a
  YAML file over `MAX_YAML_BYTES` is not parsed;
- is read from a regular file only (a FIFO or `/dev/zero` would block or never end).

Writing the other way, `spreadsheet_safe` keeps a CSV export from running formulas in a
spreadsheet (OWASP's CSV-injection guidance).
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from segaudit.core.errors import ConfigError, SegauditError, first_line

MAX_YAML_BYTES = 1024 * 1024  # cards, dataset.yaml and saved configs are a few kB
INTERPOLATION = "${"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses aliases: an alias bomb expands exponentially."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: YAML aliases (*name) are not allowed in a data file")
        return super().compose_node(parent, index)


def check_regular_file(path: Path, what: str, error: type[SegauditError] = ConfigError) -> None:
    """Refuse anything but an existing regular file (symlinks to one are followed).

    Raises:
        `error`: `{what} {path}: not a regular file (a device, FIFO or folder)`.
    """
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise error(f"{what} {path}: cannot read it ({first_line(err)})") from None
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path}: not a regular file (a device, FIFO or folder cannot be read as data)")


def read_yaml(path: Path, what: str, error: type[SegauditError] = ConfigError) -> Any:
    """A YAML data file: regular, at most `MAX_YAML_BYTES`, UTF-8, no aliases, no `${...}`.

    Raises:
        `error`: one line naming `path` and what is wrong.
    """
    path = Path(path)
    check_regular_file(path, what, error)
    if path.stat().st_size > MAX_YAML_BYTES:
        raise error(f"{what} {path}: larger than {MAX_YAML_BYTES // 1024} kB; not read as a data file")
    try:
        data = yaml.load(path.read_bytes().decode("utf-8"), Loader=_NoAliasLoader)  # noqa: S506 - safe loader subclass
    except UnicodeDecodeError:
        raise error(f"{what} {path}: not UTF-8 text") from None
    except yaml.YAMLError as err:
        raise error(f"{what} {path}: not valid YAML ({first_line(err)})") from None
    except OSError as err:
        raise error(f"{what} {path}: cannot read it ({first_line(err)})") from None
    except RecursionError:  # "[[[[..." a few thousand deep
        raise error(f"{what} {path}: nested too deeply for a data file") from None
    check_plain(data, f"{what} {path}", error)
    return data


def interpolated_key(value: Any, key: str = "") -> str | None:
    """The dotted key of the first text (key or value) in `value` holding `${`, or None."""
    if isinstance(value, str):
        return (key or "value") if INTERPOLATION in value else None
    if isinstance(value, dict):
        for name, item in value.items():
            shown = name if isinstance(name, str) and name.isprintable() and name else repr(name)
            child = f"{key}.{shown}" if key else shown
            if isinstance(name, str) and INTERPOLATION in name:
                return child
            found = interpolated_key(item, child)
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = interpolated_key(item, f"{key}[{index}]")
            if found:
                return found
    return None


def check_plain(value: Any, source: str, error: type[SegauditError] = ConfigError) -> None:
    """Refuse `${...}` anywhere in data read from `source` (a file, a CSV row).

    Raises:
        `error`: `{source}: {key}: '${...}' is interpolation, ...`.
    """
    key = interpolated_key(value)
    if key is not None:
        raise error(
            f"{source}: {key}: '${{...}}' is interpolation, which a data file may not use "
            f"(segaudit reads files as plain data)"
        )


def spreadsheet_safe(cell: Any) -> Any:
    """`cell` as a CSV export writes it: text a spreadsheet would take for a formula
    (starting with = + - @ tab or carriage return) gets a leading `'` (OWASP)."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        return "'" + cell
    return cell
