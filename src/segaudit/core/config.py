"""Compose the Hydra config (Compose API) and check overrides before Hydra sees them.

Hydra's own errors are long and name internals; a user typing `model=unett` or
`train.iters=abc` should get one line naming the key and what would be valid.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from segaudit.core.datafiles import read_yaml
from segaudit.core.errors import ConfigError, first_line

CONF_DIR = Path(__file__).parent.parent / "conf"  # segaudit/conf, beside the subpackages
_ABSENT = object()


def config_groups() -> dict[str, list[str]]:
    """Each config group (`dataset`, `model`, ...) and its options."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(CONF_DIR.iterdir())
        if d.is_dir() and not d.name.startswith((".", "_"))
    }


def _parse_hint(text: str, err: HydraException) -> str:
    """What to do about an override Hydra cannot parse (its own detail can be a bare `^`)."""
    key, sep, value = text.partition("=")
    if not sep:
        return (
            "not key=value; if it is the rest of the previous value (a path with spaces), "
            "quote the whole override: 'dataset.root=/my data'"
        )
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.startswith("See ")]
    detail = next((ln for ln in reversed(lines) if ln.strip("^ ")), "invalid syntax")
    quoted = value.replace("'", "\\'")
    return f"{detail}; quote a value with spaces or ( ) {{ }} [ ] ' , in it: \"{key}='{quoted}'\""


def _parse(overrides: list[str]) -> list[Override]:
    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except HydraException as err:
            raise ConfigError(f"cannot parse override '{text}': {_parse_hint(text, err)}") from None
        if parsed[-1].is_sweep_override():
            raise ConfigError(f"'{text}': sweeps are not supported here (use segaudit retrain)")
    return parsed


def _compose(overrides: list[str]) -> DictConfig:
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return hydra_compose("config", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(first_line(err)) from None


def _lookup(tree: Any, key: str) -> Any:
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def _compatible(default: Any, value: Any) -> bool:
    if default is None or default == "auto" or (isinstance(default, str) and default.startswith(("${", "???"))):
        return True  # nullable, automatic, interpolated or required: any value
    if value is None:
        return False
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return isinstance(value, type(default))


# Keys that take null to mean "off" whatever their default (gate thresholds).
NULLABLE_PREFIXES = ("gate.",)
# Keys that take a word beside values of their default's type.
KEYWORDS = {"train.iters": ("auto",)}


def _check_key(tree: dict, override: Override, text: str) -> None:
    key = override.key_or_group
    default = _lookup(tree, key)
    if default is _ABSENT:
        parent, _, leaf = key.rpartition(".")
        siblings = _lookup(tree, parent) if parent else tree
        where = f"under {parent}" if parent else "at the top level"
        valid = ", ".join(sorted(siblings)) if isinstance(siblings, dict) else "none"
        raise ConfigError(f"unknown config key '{key}' (keys {where}: {valid})")
    value = override.value()
    if value is None and key.startswith(NULLABLE_PREFIXES) or value in KEYWORDS.get(key, ()):
        return
    if not _compatible(default, value):
        raise ConfigError(f"{key}: expected {_type_name(default)} like {default!r}, got {value!r} in '{text}'")


# Config nodes filled from a group mounted under another name (`condition@train_condition`).
MOUNTED = {"train_condition": "condition", "eval_condition": "condition"}


def _alias(text: str, groups: dict[str, list[str]]) -> str:
    """`train_condition=noise` is short for Hydra's `condition@train_condition=noise`."""
    key, sep, value = text.partition("=")
    if sep and key in MOUNTED:
        if value not in groups[MOUNTED[key]]:
            raise ConfigError(f"unknown {key} '{value}' (choices: {', '.join(groups[MOUNTED[key]])})")
        return f"{MOUNTED[key]}@{key}={value}"
    return text


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The top-level key each override sets: `dataset.root=X` -> `dataset`,
    `+train.x=1` -> `train`, `condition@train_condition=noise` -> `train_condition`."""
    keys = []
    for text in overrides:
        key = text.partition("=")[0].lstrip("+~")
        keys.append(key.split("@")[-1].split(".")[0])
    return keys


# What `resume=` may change: where the run lives and how this machine runs it, never
# what the run computes.
RESUME_MAY_SET = ("resume", "paths", "device", "train.progress", "train.num_workers")


def check_resume_overrides(overrides: Iterable[str]) -> None:
    """Refuse overrides that a resumed run would ignore (it continues with its saved config).

    Raises:
        ConfigError: naming the first such override.
    """
    overrides = list(overrides)
    if "resume" not in override_keys(overrides):
        return
    for text in overrides:
        key = text.partition("=")[0].lstrip("+~")
        if not any(key == allowed or key.startswith(allowed + ".") for allowed in RESUME_MAY_SET):
            raise ConfigError(
                f"{text}: a resumed run continues with its saved config and would "
                f"ignore this; start a new run to change it"
            )


def load_group_option(group: str, option: str) -> DictConfig:
    """One option of a config group as a config node (e.g. `condition`, `noise`), composed
    by Hydra, so the option's own `defaults:` (a preset built on another, the shared
    `conf/_dataset` blocks) apply as they do in `compose`."""
    path = CONF_DIR / group / f"{option}.yaml"
    if not path.is_file():
        choices = ", ".join(config_groups().get(group, []))
        raise ConfigError(f"unknown {group} '{option}' (choices: {choices})")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return hydra_compose(config_name=f"{group}/{option}")[group]
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"{path}: {first_line(err)}") from None


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """Compose `conf/config.yaml` with command-line overrides.

    Group choices (`model=pspnet`) are checked against the files in `conf/<group>/`;
    key overrides (`train.iters=50`) against the keys and value types of the composed
    defaults. `+key=value` adds a new key without checks. The returned config carries
    the chosen option of each group under `choices`.

    Raises:
        ConfigError: one line naming the bad key or value and the valid choices.
    """
    groups = config_groups()
    overrides = [_alias(text, groups) for text in overrides]
    group_texts, key_checks = [], []
    for override, text in zip(_parse(overrides), overrides):
        key = override.key_or_group
        if key in groups:
            value = override.value()
            if value not in groups[key]:
                raise ConfigError(f"unknown {key} '{value}' (choices: {', '.join(groups[key])})")
            group_texts.append(text)
        elif not (override.is_add() or override.is_force_add() or override.is_delete()):
            key_checks.append((override, text))
    if key_checks:
        tree = OmegaConf.to_container(_compose(group_texts), resolve=False)
        tree.pop("hydra", None)
        for override, text in key_checks:
            _check_key(tree, override, text)
    cfg = _compose(overrides)
    choices = {g: cfg.hydra.runtime.choices.get(g) for g in groups}
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.choices = choices
    check_extras(cfg)
    return cfg


def check_extras(cfg: DictConfig) -> None:
    """Refuse a chosen option whose optional package is missing (`requires` in its file),
    naming the extra that installs it, before anything runs.

    Raises:
        ConfigError: e.g. `logger=mlflow: the mlflow package is not installed (pip install 'segaudit[mlflow]')`.
    """
    logger = cfg.get("logger")
    module = logger.get("requires") if logger is not None else None
    if module and importlib.util.find_spec(str(module)) is None:
        raise ConfigError(
            f"logger={logger.name}: the {module} package is not installed "
            f"(pip install '{logger.get('extra', 'segaudit')}')"
        )


# --------------------------------------------------------------------------- what may be built
# Every object segaudit builds from a config goes through `safe_instantiate`, and every
# `_target_` in that config must be one of these. A config can come from a file a stranger
# wrote (a checkpoint's config, a run folder's config.yaml on resume, a dataset's files),
# and Hydra would otherwise call any importable function it names, nested targets included.
SMP_ARCHITECTURES = (
    "DPT",
    "DeepLabV3",
    "DeepLabV3Plus",
    "FPN",
    "Linknet",
    "MAnet",
    "PAN",
    "PSPNet",
    "Segformer",
    "UPerNet",
    "Unet",
    "UnetPlusPlus",
)
SAFE_TARGETS = frozenset(
    {
        *(f"segmentation_models_pytorch.{name}" for name in SMP_ARCHITECTURES),
        "torch.optim.SGD",
        "torch.optim.Adam",
        "torch.optim.AdamW",
        "segaudit.models.losses.TieredLoss",
        "segaudit.data.labels.cityscapes_label_map",
        "segaudit.runs.trackers.TensorBoardTracker",
        "segaudit.runs.trackers.MLflowTracker",
    }
)
# Targets as run folders and checkpoints written before the subpackages (0.x) name them:
# still built, under their new import paths.
MOVED_TARGETS = {
    "segaudit.losses.TieredLoss": "segaudit.models.losses.TieredLoss",
    "segaudit.trackers.TensorBoardTracker": "segaudit.runs.trackers.TensorBoardTracker",
    "segaudit.trackers.MLflowTracker": "segaudit.runs.trackers.MLflowTracker",
}


def unsafe_targets(node: Any) -> list[str]:
    """Every `_target_` in `node` (resolved, at any depth) that is not in `SAFE_TARGETS`."""
    if isinstance(node, DictConfig | ListConfig):
        node = OmegaConf.to_container(node, resolve=True)
    found = []
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and MOVED_TARGETS.get(target, target) not in SAFE_TARGETS:
            found.append(str(target))
        for value in node.values():
            found += unsafe_targets(value)
    elif isinstance(node, list):
        for value in node:
            found += unsafe_targets(value)
    return found


def check_targets(node: Any, source: str) -> None:
    """Refuse a config that names anything outside `SAFE_TARGETS` to build.

    Raises:
        ConfigError: one line naming `source` and the first unknown target.
    """
    try:
        bad = unsafe_targets(node)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{source}: unreadable config ({first_line(err)})") from None
    if bad:
        raise ConfigError(
            f"{source}: refusing to build {bad[0]!r}: segaudit only builds its own "
            f"models, losses, optimizers, label maps and trackers (see config.SAFE_TARGETS)"
        )


# A saved config (a run folder's config.yaml) says *what* to compute. Where to write or
# send (paths, trackers and their URIs), how this machine runs it, and whether to run code
# always come from the command that reads it: anyone with the runs folder can edit the file.
COMMAND_OWNED = (
    "paths",
    "logger",
    "launcher",
    "device",
    "train.progress",
    "train.num_workers",
    "source.trust",
    "source.factory",
    "card.factory",
)


def with_command_settings(saved: DictConfig, cfg: DictConfig) -> DictConfig:
    """`saved` with every `COMMAND_OWNED` key taken from the current command's `cfg`
    (a key the command lacks is removed from the result)."""
    out = saved.copy()
    with open_dict(out):
        for key in COMMAND_OWNED:
            head, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(out, head) if head else out
            value = OmegaConf.select(cfg, key, default=_ABSENT)
            if value is _ABSENT:
                if isinstance(parent, DictConfig) and leaf in parent:
                    del parent[leaf]
            elif isinstance(parent, DictConfig):
                parent[leaf] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return out


def safe_instantiate(node: DictConfig, source: str, **kwargs: Any) -> Any:
    """Hydra `instantiate` after `check_targets`: the only way segaudit builds from a config."""
    check_targets(node, source)
    return instantiate(_moved_to_current(node), **kwargs)


def _moved_to_current(node: DictConfig) -> DictConfig:
    """`node` with every `MOVED_TARGETS` name replaced by its current import path."""

    def rename(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (MOVED_TARGETS.get(v, v) if k == "_target_" else rename(v)) for k, v in value.items()}
        return [rename(v) for v in value] if isinstance(value, list) else value

    if not isinstance(node, DictConfig):
        return node
    container = OmegaConf.to_container(node, resolve=True)
    return node if rename(container) == container else OmegaConf.create(rename(container))


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML (what a run directory keeps)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def load_yaml(path: Path) -> DictConfig:
    """A saved config (a run folder's `config.yaml`) as plain data: written resolved, so a
    `${...}` in it was put there by hand and is refused, as are YAML aliases."""
    data = read_yaml(path, "saved config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a config mapping")
    try:
        return OmegaConf.create(data)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: cannot read config ({first_line(err)})") from None
