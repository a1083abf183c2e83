"""Models segaudit did not train: safe loading of other formats and their model cards.

A source is a path. What it holds decides how it loads:

- a segmentation-models-pytorch `save_pretrained` directory (`config.json` with an smp
  `_model_class`, `model.safetensors`): rebuilt from the smp class, weights from safetensors;
- a weights file (`.safetensors`, or a state_dict read with `weights_only=True`) together
  with `--factory package.module:function`, the user's own code that builds the model;
- a Hugging Face `transformers` semantic-segmentation directory (`config.json` with a
  `model_type`, weights; `pip install segaudit[hf]`): its `preprocessor_config.json`
  fills the card's mean, std and input range, and the logits are its `logits`;
- an ONNX file, run by onnxruntime (CUDA provider when there is a GPU); the graph's
  metadata may carry card fields (`mean`, `std`, `channels`, `input_range` as JSON text);
- a TorchScript archive or a `torch.export` `.pt2` program: loading these runs code, so
  only with `--trust-model`.

Nothing here unpickles Python objects. The model card (`ModelCard`) says how the model
wants its input and which output holds the logits; `CardAdapter` turns segaudit's
normalised RGB batches into that input and the output back into logits at input size.
"""

from __future__ import annotations

import importlib
import json
import math
import warnings
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file as load_safetensors
from torch import nn

from segaudit.core.config import SMP_ARCHITECTURES
from segaudit.core.datafiles import read_yaml
from segaudit.core.errors import ConfigError, first_line
from segaudit.data.labels import cityscapes_label_map

CARD_SUFFIX = ".card.yaml"  # sidecar next to a model file; `card.yaml` inside a directory
_PREFIXES = ("module.", "model.", "_orig_mod.")  # DDP, Lightning-style and compiled wrappers


# --------------------------------------------------------------------------- the card
@dataclass
class ModelCard:
    """A model's input and output conventions. None means: not stated (the format's value,
    else the dataset's)."""

    mean: list[float] | None = None  # in the units of `input_range`
    std: list[float] | None = None
    input_range: float | None = None  # 1: floats in 0..1, 255: 0..255
    channels: str | None = None  # rgb | bgr
    output: str | int | None = None  # dict key ('out', 'logits') or tuple index
    upsample: bool | None = None  # resize a smaller output to the input size
    class_map: list[int] | str | None = None  # model channel i is dataset class class_map[i]
    # (255 or -1: no dataset class), or `cityscapes_label_ids` (34 label ids -> 19 train ids)
    input_size: list[int] | None = None  # [H, W] every image is resized to before the model
    # (graphs exported for one size); the logits are resized back to the label size
    factory: str | None = None  # package.module:function that builds the model for its weights
    # (from a card file this is code to run: it loads only with --trust-model)

    def merged(self, other: ModelCard) -> ModelCard:
        """This card with `other`'s stated fields on top."""
        return ModelCard(
            **{
                f.name: getattr(other, f.name) if getattr(other, f.name) is not None else getattr(self, f.name)
                for f in fields(self)
            }
        )


def card_from_mapping(values: Any, source: str) -> ModelCard:
    """A card from a YAML mapping or config node; a one-line error for unknown or bad fields."""
    if values is None:
        return ModelCard()
    if isinstance(values, DictConfig):
        values = OmegaConf.to_container(values, resolve=True)
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a model card is a mapping of {', '.join(f.name for f in fields(ModelCard))}")
    known = {f.name for f in fields(ModelCard)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown card field '{unknown[0]}' (fields: {', '.join(sorted(known))})")
    _check_card_values(values, source)
    card = ModelCard(**values)
    if card.class_map is not None:
        channel_for_class(card.class_map, source)  # a clear error now, not at the first batch
    return card


MAX_INPUT_SIDE = 8192  # card.input_size: larger is a typo or a memory bomb, not a model


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_card_values(values: dict, source: str) -> None:
    """Each stated card field has the type and range it needs (YAML reads `1e308` as text
    and `yes` as a boolean, so nothing is coerced)."""

    def bad(name: str, what: str) -> ConfigError:
        return ConfigError(f"{source}: {name}={values[name]!r}: {what}")

    stated = {k: v for k, v in values.items() if v is not None}
    if "channels" in stated and stated["channels"] not in ("rgb", "bgr"):
        raise bad("channels", "choose rgb or bgr")
    if "input_range" in stated and (isinstance(stated["input_range"], bool) or stated["input_range"] not in (1, 255)):
        raise bad("input_range", "choose 1 (floats 0..1) or 255")
    for name in ("mean", "std"):
        if name in stated and not (
            isinstance(stated[name], list) and len(stated[name]) == 3 and all(_is_number(v) for v in stated[name])
        ):
            raise bad(name, "must list 3 finite numbers, one per channel")
    if "std" in stated and not all(v > 0 for v in stated["std"]):
        raise bad("std", "every channel's std must be > 0 (the input is divided by it)")
    if "upsample" in stated and not isinstance(stated["upsample"], bool):
        raise bad("upsample", "must be true or false")
    if "output" in stated and (isinstance(stated["output"], bool) or not isinstance(stated["output"], (str, int))):
        raise bad("output", "must be a dict key (text) or a tuple index (a whole number)")
    if "factory" in stated and not isinstance(stated["factory"], str):
        raise bad("factory", "must be package.module:function")
    size = stated.get("input_size")
    if size is not None and not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_INPUT_SIDE for v in size)
    ):
        raise bad("input_size", f"must be [H, W], two whole numbers in 1..{MAX_INPUT_SIDE}")


NAMED_CLASS_MAPS = ("cityscapes_label_ids",)


def class_map_list(class_map: list[int] | str) -> list[int]:
    """A card's `class_map` as a list (model channel -> dataset class, 255: none)."""
    if class_map == "cityscapes_label_ids":  # a model that predicts Cityscapes' 34 label ids
        table = cityscapes_label_map()
        return [table.get(i, 255) for i in range(34)]
    return list(class_map)


def channel_for_class(class_map: list[int] | str, source: str = "card") -> list[int]:
    """For each dataset class 0..K-1, the model channel that predicts it."""
    if isinstance(class_map, str) and class_map not in NAMED_CLASS_MAPS:
        raise ConfigError(f"{source}: class_map={class_map}: give a list or one of {', '.join(NAMED_CLASS_MAPS)}")
    values = class_map_list(class_map)
    if not values or not all(isinstance(v, int) for v in values):
        raise ConfigError(f"{source}: class_map must list one dataset class id per model channel")
    kept = [v for v in values if v not in (255, -1)]
    if sorted(kept) != list(range(len(kept))):
        raise ConfigError(
            f"{source}: class_map must name every dataset class 0..K-1 exactly once "
            f"(255 or -1 for model channels with no dataset class)"
        )
    return [values.index(c) for c in range(len(kept))]


def read_card(source: Path) -> ModelCard:
    """The sidecar card of a source: `MODEL.card.yaml` beside a file, `card.yaml` in a folder."""
    path = source / "card.yaml" if source.is_dir() else source.with_name(source.name + CARD_SUFFIX)
    return read_card_file(path) if path.is_file() else ModelCard()


def read_card_file(path: Path) -> ModelCard:
    """A model card YAML (`source.card_file`, an inventory's `card` column)."""
    if not path.exists():
        raise ConfigError(f"{path}: model card not found")
    return card_from_mapping(read_yaml(path, "model card"), str(path))


class CardAdapter(nn.Module):
    """Runs an external model on segaudit's batches (RGB, normalised with the dataset's
    mean/std) the way its card says, and returns logits at the input's size."""

    def __init__(self, model: nn.Module, card: ModelCard, data_mean: list[float], data_std: list[float]):
        super().__init__()
        self.model = model
        self.card = card
        scale = float(card.input_range or 1)
        mean = card.mean if card.mean is not None else [m * scale for m in data_mean]
        std = card.std if card.std is not None else [s * scale for s in data_std]
        self.register_buffer("data_mean", torch.tensor(data_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("data_std", torch.tensor(data_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.scale = scale
        self.channels = None if card.class_map is None else channel_for_class(card.class_map)

    def train(self, mode: bool = True) -> CardAdapter:
        """External models are only measured: the wrapped model stays in eval mode (set once
        in `load_external`; exported `.pt2` programs refuse `train()`/`eval()` calls)."""
        self.training = mode
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images * self.data_std + self.data_mean  # back to RGB in 0..1
        if self.card.channels == "bgr":
            x = x.flip(1)
        x = (x * self.scale - self.mean) / self.std
        if self.card.input_size is not None and list(x.shape[-2:]) != list(self.card.input_size):
            x = F.interpolate(x, size=tuple(self.card.input_size), mode="bilinear", align_corners=False)
        logits = select_output(self.model(x), self.card.output)
        if (self.card.upsample is not False or self.card.input_size is not None) and logits.shape[-2:] != images.shape[
            -2:
        ]:
            logits = F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        if self.channels is not None:
            if logits.shape[1] != len(class_map_list(self.card.class_map)):
                raise ConfigError(
                    f"the model outputs {logits.shape[1]} channels, its card's class_map "
                    f"lists {len(class_map_list(self.card.class_map))}"
                )
            logits = logits[:, self.channels]
        return logits


def select_output(out: Any, key: str | int | None) -> torch.Tensor:
    """The logits in whatever a model returns: a tensor, a dict (`key`, else torchvision's
    `out` or Hugging Face's `logits`), a tuple (`key`, else its first item)."""
    if isinstance(out, torch.Tensor) and key is None:
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        for name in [key] if key is not None else ["out", "logits"]:
            if name in out:
                return out[name]
        raise ConfigError(f"model output has keys {', '.join(map(str, out.keys()))}; set card.output")
    if isinstance(out, (tuple, list)):
        return out[int(key or 0)]
    raise ConfigError(f"model returned {type(out).__name__}; set card.output to pick the logits")


# --------------------------------------------------------------------------- loading
class OnnxModel(nn.Module):
    """An ONNX graph as a module: torch batches in, torch logits out (float32)."""

    def __init__(self, path: Path):
        super().__init__()
        import onnxruntime  # imported here: a few hundred ms that only ONNX sources pay

        providers = [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()
        ]
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own error types
            raise ConfigError(f"{path}: not a usable ONNX model ({first_line(err)[:200]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def card(self, path: Path) -> ModelCard:
        """Card fields the graph's metadata states (JSON values under the card's names)."""
        meta = self.session.get_modelmeta().custom_metadata_map
        values = {}
        for field in ("mean", "std", "channels", "input_range", "output"):
            if field in meta:
                try:
                    values[field] = json.loads(meta[field])
                except json.JSONDecodeError:
                    values[field] = meta[field]
        return card_from_mapping(values, f"{path} (metadata)")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.session.run(None, {self.input_name: images.detach().float().cpu().numpy()})
        return tuple(torch.from_numpy(o).to(images.device) for o in outputs)


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with a `code/` folder; a `torch.save` file has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


MAX_DECLARED_CLASSES = 10_000  # ADE20K-full has 3,688; a billion would allocate its head first


def check_declared_classes(config: dict, source: Path) -> None:
    """Refuse a `config.json` whose declared number of output classes (HF `num_labels`,
    `id2label`, smp `classes`) is not a whole number in 1..MAX_DECLARED_CLASSES, before
    the model is built (a building model allocates its head at that size).

    Raises:
        ConfigError: naming the file and key.
    """
    declared = {
        "num_labels": config.get("num_labels"),
        "classes": config.get("classes"),
        "id2label": len(config["id2label"]) if isinstance(config.get("id2label"), dict) else None,
    }
    for key, value in declared.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DECLARED_CLASSES:
            raise ConfigError(
                f"{source}: {key}={value!r}: a model's classes must be a whole number in 1..{MAX_DECLARED_CLASSES}"
            )


def _config_json(path: Path) -> dict | None:
    if not (path.is_dir() and (path / "config.json").is_file()):
        return None
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return config if isinstance(config, dict) else None


def is_smp_dir(path: Path) -> bool:
    """An smp `save_pretrained` folder: its `config.json` names an smp `_model_class`."""
    config = _config_json(path)
    return config is not None and "_model_class" in config and (path / "model.safetensors").is_file()


def is_hf_dir(path: Path) -> bool:
    """A Hugging Face `transformers` folder: its `config.json` names a `model_type`."""
    config = _config_json(path)
    return config is not None and "model_type" in config and "_model_class" not in config


def load_hf_dir(path: Path) -> nn.Module:
    """A `transformers` semantic-segmentation folder (SegFormer, UperNet, DPT, ...), loaded
    by `AutoModelForSemanticSegmentation.from_pretrained` from its safetensors only (no
    pickle, no remote code, nothing downloaded); transformers renames legacy weight names."""
    try:
        from transformers import AutoModelForSemanticSegmentation
        from transformers.utils import logging as hf_logging
    except ImportError:  # the [hf] extra is optional: most users never need it
        raise ConfigError(f"{path}: a Hugging Face model needs transformers: pip install 'segaudit[hf]'") from None
    if not any(path.glob("*.safetensors")):
        raise ConfigError(
            f"{path}: segaudit loads Hugging Face weights from safetensors only (a .bin is a "
            f"pickle); re-save with save_pretrained(path, safe_serialization=True)"
        )
    check_declared_classes(_config_json(path) or {}, path / "config.json")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report goes to the log; segaudit checks below
    try:
        model, info = AutoModelForSemanticSegmentation.from_pretrained(
            str(path), trust_remote_code=False, local_files_only=True, use_safetensors=True, output_loading_info=True
        )
    except Exception as err:  # noqa: BLE001 - transformers raises many types for unknown configs
        raise ConfigError(
            f"{path}: not a loadable transformers semantic-segmentation model ({first_line(err)[:200]})"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    # transformers would start missing weights at random: refuse instead
    check_keys(path, info.get("missing_keys", []), info.get("unexpected_keys", []))
    return model


def hf_card(path: Path) -> ModelCard:
    """Card fields a `preprocessor_config.json` states: mean/std, and the input range from
    its rescaling (an image processor rescales 0..255 to 0..1 before normalising)."""
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return ModelCard(output="logits")
    try:
        pre = json.loads(file.read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise ConfigError(f"{file}: unreadable ({first_line(err)})") from None
    rescaled = pre.get("do_rescale", True) and abs(float(pre.get("rescale_factor", 1 / 255)) - 1 / 255) < 1e-9
    values = {"output": "logits", "input_range": 1 if rescaled else 255}
    if pre.get("do_normalize", True) and "image_mean" in pre and "image_std" in pre:
        values.update(mean=[float(v) for v in pre["image_mean"]], std=[float(v) for v in pre["image_std"]])
    elif not pre.get("do_normalize", True):
        values.update(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])
    return card_from_mapping(values, str(file))


def load_smp_dir(path: Path) -> nn.Module:
    """An smp `save_pretrained` folder: the class from `_model_class` (one of smp's own
    architectures), its keyword arguments from `config.json`, weights from safetensors."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError, RecursionError) as err:
        raise ConfigError(f"{path / 'config.json'}: unreadable ({first_line(err)})") from None
    name = config.pop("_model_class", None) if isinstance(config, dict) else None
    if name not in SMP_ARCHITECTURES:
        raise ConfigError(
            f"{path / 'config.json'}: _model_class={name!r} is not a "
            f"segmentation-models-pytorch architecture ({', '.join(SMP_ARCHITECTURES)})"
        )
    check_declared_classes(config, path / "config.json")
    config["encoder_weights"] = None  # the weights come from the folder, never from a download
    try:
        model = getattr(smp, name)(**config)
    except Exception as err:  # noqa: BLE001 - smp raises many types for bad arguments
        raise ConfigError(f"{path / 'config.json'}: cannot build {name} ({first_line(err)[:200]})") from None
    load_weights(model, path / "model.safetensors")
    return model


def load_weights_only(path: Path) -> Any:
    """`torch.load` with `weights_only=True`, without torch's warnings about foreign pickle
    protocols (the one-line error that follows a refused file says what matters)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from `.safetensors` or a `torch.save`d state_dict (never unpickling objects)."""
    if path.suffix == ".safetensors":
        try:
            return load_safetensors(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise ConfigError(f"{path}: unreadable safetensors ({first_line(err)})") from None
    try:
        state = load_weights_only(path)
    except Exception as err:  # noqa: BLE001 - torch raises many types for foreign pickles
        raise ConfigError(
            f"{path}: not a plain state_dict ({first_line(err)[:160]}); segaudit never "
            f"unpickles objects: save model.state_dict() or safetensors"
        ) from None
    for wrapper in ("state_dict", "model"):  # Lightning checkpoints, segaudit-style dicts
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: not a state_dict (a mapping of parameter names to tensors)")
    return state


def check_keys(path: Path, missing, unexpected) -> None:
    """A one-line error listing the first few missing and unexpected weight names."""
    missing, unexpected = sorted(missing), sorted(unexpected)
    if missing or unexpected:
        parts = [
            f"{len(keys)} {kind} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
            for kind, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise ConfigError(f"{path}: weights do not fit the model: {'; '.join(parts)}")


def load_weights(model: nn.Module, path: Path) -> None:
    """Load weights strictly, after stripping wrapper prefixes the model does not use."""
    state = read_state_dict(path)
    expected = set(model.state_dict())
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state) and not expected & set(state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    check_keys(path, expected - set(state), set(state) - expected)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"{path}: weights do not fit the model ({first_line(err)[:200]})") from None


def call_factory(spec: str) -> nn.Module:
    """`package.module:function`, called with no arguments, must return an `nn.Module`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--factory {spec}: expected package.module:function")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"--factory {spec}: cannot import it ({first_line(err)})") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--factory {spec}: returned {type(model).__name__}, not a torch nn.Module")
    return model


def load_external(path: Path, factory: str | None, trust: bool) -> tuple[nn.Module, str]:
    """The model a source path holds and the name of its format (see the module docstring).

    Raises:
        ConfigError: an unknown or unreadable format, code-carrying formats without
            `trust`, a state_dict without a factory, or weights that do not fit.
    """
    if factory is not None:
        model = call_factory(factory)
        load_weights(model, path)
        return model.eval(), "factory"
    if is_smp_dir(path):
        return load_smp_dir(path).eval(), "smp"
    if is_hf_dir(path):
        return load_hf_dir(path).eval(), "hf"
    if path.suffix == ".onnx" and path.is_file():
        return OnnxModel(path), "onnx"
    if path.suffix == ".pt2" or is_torchscript(path):
        kind = "torch.export program" if path.suffix == ".pt2" else "TorchScript archive"
        if not trust:
            raise ConfigError(
                f"{path}: a {kind} runs its own code when loaded; pass --trust-model if you trust where it came from"
            )
        try:
            loaded = (
                torch.export.load(str(path)).module()
                if path.suffix == ".pt2"
                else torch.jit.load(str(path), map_location="cpu")
            )
        except Exception as err:  # noqa: BLE001 - either loader raises many types
            raise ConfigError(f"{path}: cannot load the {kind} ({first_line(err)[:200]})") from None
        if path.suffix != ".pt2":
            loaded.eval()  # a .pt2 program keeps the mode it was exported in
        return loaded, "pt2" if path.suffix == ".pt2" else "torchscript"
    if path.is_file() and path.suffix in (".safetensors", ".pt", ".pth", ".bin"):
        read_state_dict(path)  # a clear error for pickled objects first
        raise ConfigError(f"{path}: weights without a model; give --factory package.module:function that builds it")
    raise ConfigError(
        f"{path}: not a model segaudit can load (a run id, a segaudit checkpoint, an smp "
        f"save_pretrained folder, ONNX, weights with --factory, or TorchScript/.pt2 "
        f"with --trust-model)"
    )


def check_output_channels(
    model: nn.Module, num_classes: int, source: str, device: torch.device, size: tuple[int, int]
) -> None:
    """One forward pass on a blank image of the dataset's size (exported programs may be
    fixed to it): the model must give one channel per dataset class."""
    with torch.inference_mode():
        try:
            logits = model(torch.zeros(1, 3, *size, device=device))
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        except Exception as err:  # noqa: BLE001 - whatever the foreign model raises
            raise ConfigError(
                f"{source}: the model fails on a {size[0]}x{size[1]} image ({first_line(err)[:200]})"
            ) from None
    if logits.ndim != 4 or logits.shape[1] != num_classes:
        hint = ""
        if logits.ndim == 4 and logits.shape[1] == 34 and num_classes == 19:
            hint = "; a model of Cityscapes label ids needs card.class_map=cityscapes_label_ids"
        elif logits.ndim == 4:
            hint = "; give card.class_map when its classes differ from the dataset's"
        raise ConfigError(
            f"{source}: the model outputs {tuple(logits.shape)}, expected "
            f"(N, {num_classes}, H, W) for the dataset's {num_classes} classes{hint}"
        )
