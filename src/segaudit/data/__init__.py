"""Datasets: the folder layout (with presets), the embedded synthetic scenes, sampling."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from segaudit.core.datafiles import read_yaml
from segaudit.core.errors import DataError
from segaudit.data.conditions import ON_DEVICE, REPAIRED, condition_samples
from segaudit.data.folder import FolderDataset, Sample, pair_files
from segaudit.data.labels import label_lut, names_from_json
from segaudit.data.sampler import size_grouped_batches
from segaudit.data.synthetic import SynthSpec, ensure_synthetic
from segaudit.data.transforms import build_transform

__all__ = ["FolderDataset", "build_dataset", "eval_loader", "list_samples", "prepare_dataset"]

# Keys a ROOT/dataset.yaml may fill in when the config leaves them null: an override on
# the command line wins over the file, and the file over the defaults below.
_META_KEYS = ("num_classes", "class_names", "ignore_index", "class_colors")
DEFAULT_IGNORE_INDEX = 255


def prepare_dataset(dcfg: DictConfig, cache_dir: str | Path) -> DictConfig:
    """Return a copy of the dataset config with `root` and the class list filled in.

    The synthetic dataset is generated into `cache_dir` on first use when `root` is
    null. Classes come from the config, else from `ROOT/dataset.yaml`.

    Raises:
        DataError: the root is missing, or the number of classes is known nowhere.
    """
    dcfg = OmegaConf.create(OmegaConf.to_container(dcfg, resolve=True))
    if OmegaConf.is_missing(dcfg, "root"):
        raise DataError(f"dataset.root is not set: give dataset.root=DIR for dataset={dcfg.name}")
    with open_dict(dcfg):
        if dcfg.root is None and "generate" in dcfg:
            spec = SynthSpec(**OmegaConf.to_container(dcfg.generate))
            dcfg.root = str(ensure_synthetic(Path(cache_dir), spec))
        root = Path(str(dcfg.root)).expanduser()
        if not root.is_dir():
            raise DataError(f"{root}: dataset.root is not a folder")
        dcfg.root = str(root.resolve())
        _prefer_train_id_masks(dcfg, root)
        meta_file = root / "dataset.yaml"
        if meta_file.is_file():
            meta = _read_meta(meta_file)
            for key in _META_KEYS:
                if dcfg.get(key) is None and meta.get(key) is not None:
                    dcfg[key] = meta[key]
        if dcfg.get("ignore_index") is None:
            dcfg.ignore_index = DEFAULT_IGNORE_INDEX
        if isinstance(dcfg.ignore_index, bool) or not (
            isinstance(dcfg.ignore_index, int) and 0 <= dcfg.ignore_index <= 255
        ):
            raise DataError(
                f"dataset.ignore_index: {dcfg.ignore_index!r} is not a label id in 0..255 "
                f"(set it in the config or in {meta_file})"
            )
        _check_names(dcfg, meta_file)
        if dcfg.get("num_classes") is None and dcfg.get("class_names"):
            dcfg.num_classes = len(dcfg.class_names)
        if dcfg.get("num_classes") is None:
            raise DataError(f"dataset.num_classes is not set and {meta_file} does not give it")
        _check_classes(dcfg, meta_file)
        if dcfg.get("class_names") is None and dcfg.get("class_names_json"):
            dcfg.class_names = names_from_json(root / dcfg.class_names_json, int(dcfg.num_classes))
        if dcfg.get("class_names") is None:
            dcfg.class_names = [f"class_{i}" for i in range(dcfg.num_classes)]
        if len(dcfg.class_names) != dcfg.num_classes:
            raise DataError(f"dataset.class_names has {len(dcfg.class_names)} names for num_classes={dcfg.num_classes}")
        _resolve_auto(dcfg)
    label_lut(dcfg)  # a broken label map fails here, before any run starts
    return dcfg


def _read_meta(path: Path) -> dict:
    """`ROOT/dataset.yaml` as a mapping; a one-line DataError for anything else."""
    meta = read_yaml(path, "dataset file", DataError)
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise DataError(
            f"{path}: expected keys such as num_classes, class_names, ignore_index; found a {type(meta).__name__}"
        )
    return meta


def _check_names(dcfg: DictConfig, meta_file: Path) -> None:
    """class_names, wherever it came from, a list of text (or unset)."""
    names = dcfg.get("class_names")
    if names is not None and (not OmegaConf.is_list(names) or not all(isinstance(n, str) for n in names)):
        raise DataError(f"dataset.class_names (or {meta_file}): expected a list of names, got {names!r}")


def _check_classes(dcfg: DictConfig, meta_file: Path) -> None:
    """num_classes, wherever it came from, a whole number >= 1."""
    where = f"dataset.num_classes (or {meta_file})"
    value = dcfg.num_classes
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{where}: {value!r} is not a whole number >= 1")


def _prefer_train_id_masks(dcfg: DictConfig, root: Path) -> None:
    """Use masks that already hold train ids (e.g. Cityscapes' labelTrainIds) when present."""
    suffix = dcfg.get("train_id_masks")
    if not suffix:
        return
    masks = root / dcfg.layout.train.masks
    if masks.is_dir() and next(masks.rglob(f"*{suffix}"), None) is not None:
        dcfg.layout.mask_suffix = suffix
        dcfg.label_map = None


CACHE_LIMIT_BYTES = 2 * 1024**3
DEFAULT_CROP = 512


def _resolve_auto(dcfg: DictConfig) -> None:
    """Fill `transform.crop: auto` and `cache_in_memory: auto` from the first training image."""
    crop_auto = "transform" in dcfg and dcfg.transform.get("crop") == "auto"
    cache_auto = dcfg.get("cache_in_memory") == "auto"
    if not (crop_auto or cache_auto):
        return
    root, layout = Path(dcfg.root), dcfg.layout.train
    try:
        samples = pair_files(
            root / layout.images,
            root / layout.masks,
            dcfg.layout.image_suffix,
            dcfg.layout.mask_suffix,
            allow_orphans=True,
        )
    except DataError:  # no pairs at all: leave `auto`; the data check lists the orphans
        return
    if "transform" in dcfg and dcfg.transform.get("resize") is not None:
        height, width = (int(v) for v in dcfg.transform.resize)
    else:
        height, width = _first_readable_size(samples)
    if crop_auto:
        dcfg.transform.crop = [min(height, DEFAULT_CROP), min(width, DEFAULT_CROP)]
    if cache_auto:
        dcfg.cache_in_memory = len(samples) * height * width * 4 <= CACHE_LIMIT_BYTES


def list_samples(dcfg: DictConfig, split: str) -> list[Sample]:
    """The image/mask pairs of one split (files are listed, not decoded).

    Raises:
        DataError: unknown split, missing folder, or files that do not pair.
    """
    if split not in dcfg.layout or split in ("image_suffix", "mask_suffix"):
        raise DataError(f"dataset.layout has no split '{split}'")
    root, layout = Path(dcfg.root), dcfg.layout[split]
    excluded = set((dcfg.get("exclude") or {}).get(split) or [])
    samples = pair_files(
        root / layout.images,
        root / layout.masks,
        dcfg.layout.image_suffix,
        dcfg.layout.mask_suffix,
        allow_orphans=dcfg.get("exclude") is not None,
    )
    samples = [s for s in samples if s.stem not in excluded]
    if not samples:
        raise DataError(f"{root / layout.images}: no usable image/mask pairs in split '{split}'")
    return samples


def _first_readable_size(samples: list[Sample]) -> tuple[int, int]:
    """(H, W) of the first image whose header reads; broken files are `data check`'s to report."""
    for sample in samples[:50]:
        try:
            with Image.open(sample.image) as im:
                return im.height, im.width
        except Exception:  # noqa: BLE001 - any unreadable file: try the next one
            continue
    raise DataError(f"{samples[0].image.parent}: no readable image among the first {min(50, len(samples))}")


def build_dataset(dcfg: DictConfig, split: str, train: bool, condition: DictConfig | None = None) -> FolderDataset:
    """The dataset of one split, with training or evaluation transforms.

    Args:
        dcfg: a dataset config already passed through `prepare_dataset`.
        split: a key of `dataset.layout` (`train`, `val`, ...).
        train: random rescale/crop/flip when True, fixed resize when False.
        condition: an input condition (`conf/condition/`); None means `real`. Device
            conditions (noise, blank) skip image decoding entirely.
    """
    samples = list_samples(dcfg, split)
    name = "real" if condition is None else condition.name
    if condition is not None:
        samples = condition_samples(samples, condition, dcfg, split)
    transform = build_transform(dcfg.transform, train=train, ignore_index=int(dcfg.ignore_index))
    return FolderDataset(
        samples,
        transform,
        cache_in_memory=bool(dcfg.get("cache_in_memory")),
        read_images=name not in ON_DEVICE,
        fit_images=name in REPAIRED,
        label_lut=label_lut(dcfg),
    )


def _sizes(dataset: Dataset) -> list[tuple[int, int]]:
    if isinstance(dataset, Subset):
        sizes = _sizes(dataset.dataset)
        return [sizes[i] for i in dataset.indices]
    return dataset.image_sizes()


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """An evaluation DataLoader whose batches hold same-sized samples only.

    `dataset` is a `FolderDataset`, a `Subset` of one, or anything with `image_sizes()`.
    """
    batches = size_grouped_batches(_sizes(dataset), batch_size)
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=pin_memory)
