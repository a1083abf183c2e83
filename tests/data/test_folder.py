"""Folder dataset: pairing by stem, orphans, decoding errors, joint transforms that stay aligned."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torchvision import tv_tensors

from segaudit.core.errors import DataError
from segaudit.data import build_dataset, prepare_dataset
from segaudit.data.folder import pair_files, read_mask
from segaudit.data.sampler import StepBatchSampler
from segaudit.data.transforms import build_transform


def _write_pair(root, stem, image=True, mask=True, size=(8, 8)):
    (root / "images").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    if image:
        Image.fromarray(np.zeros((*size, 3), np.uint8)).save(root / "images" / f"{stem}.jpg")
    if mask:
        Image.fromarray(np.zeros(size, np.uint8)).save(root / "masks" / f"{stem}_label.png")


def test_pairs_by_stem_with_configurable_suffixes(tmp_path):
    for stem in ["b", "a", "c"]:
        _write_pair(tmp_path, stem)
    samples = pair_files(tmp_path / "images", tmp_path / "masks", ".jpg", "_label.png")
    assert [s.stem for s in samples] == ["a", "b", "c"]
    assert samples[0].mask.name == "a_label.png"


def test_orphans_are_listed(tmp_path):
    _write_pair(tmp_path, "ok")
    _write_pair(tmp_path, "no_mask", mask=False)
    _write_pair(tmp_path, "no_image", image=False)
    with pytest.raises(DataError) as info:
        pair_files(tmp_path / "images", tmp_path / "masks", ".jpg", "_label.png")
    message = str(info.value)
    assert "no_mask.jpg" in message and "no_image_label.png" in message
    assert "\n" not in message


def test_missing_folder_and_bad_files(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        pair_files(tmp_path / "nope", tmp_path, ".png", ".png")
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(rgb)
    with pytest.raises(DataError, match="3 channels"):
        read_mask(rgb)
    broken = tmp_path / "broken.png"
    broken.write_bytes(rgb.read_bytes()[:30])
    with pytest.raises(DataError, match="cannot decode"):
        read_mask(broken)


def test_classes_come_from_dataset_yaml(synth_root):
    cfg = OmegaConf.create(
        {"name": "folder", "root": str(synth_root), "num_classes": None, "class_names": None, "ignore_index": 255}
    )
    prepared = prepare_dataset(cfg, "/unused")
    assert prepared.num_classes == 8 and prepared.class_names[0] == "road"
    with pytest.raises(DataError, match="dataset.root is not set"):
        prepare_dataset(OmegaConf.create({"name": "folder", "root": "???"}), "/unused")
    with pytest.raises(DataError, match="not a folder"):
        prepare_dataset(OmegaConf.create({"name": "folder", "root": str(synth_root / "x")}), "/")


def _alignment(scale, seed):
    """Fraction of labelled mask pixels whose image pixel still encodes that label."""
    torch.manual_seed(seed)
    tcfg = OmegaConf.create(
        {"resize": None, "scale": scale, "crop": [24, 24], "hflip": 0.5, "mean": [0, 0, 0], "std": [1, 1, 1]}
    )
    transform = build_transform(tcfg, train=True, ignore_index=255)
    mask = np.kron(np.arange(16, dtype=np.uint8).reshape(4, 4), np.ones((10, 10), np.uint8))
    image = np.repeat(mask[..., None] * 10, 3, axis=2)  # image pixels encode the label
    img_t, mask_t = transform(
        tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(mask))
    )
    labelled = mask_t != 255
    decoded = torch.round(img_t[0] * 255 / 10).long()
    return (decoded[labelled] == mask_t[labelled].long()).float().mean().item()


def test_joint_transforms_keep_image_and_mask_aligned():
    # Crop and flip move pixels, never values: alignment must be exact.
    assert all(_alignment([1.0, 1.0], seed) == 1.0 for seed in range(10))
    # Rescaling blends image pixels at region borders only (masks use nearest).
    assert np.mean([_alignment([0.5, 2.0], seed) for seed in range(10)]) > 0.9


def test_dataset_items(synth_root):
    cfg = prepare_dataset(
        OmegaConf.create(
            {
                "name": "folder",
                "root": str(synth_root),
                "num_classes": None,
                "class_names": None,
                "ignore_index": 255,
                "cache_in_memory": True,
                "layout": {
                    "train": {"images": "images/train", "masks": "masks/train"},
                    "val": {"images": "images/val", "masks": "masks/val"},
                    "image_suffix": ".png",
                    "mask_suffix": ".png",
                },
                "transform": {
                    "resize": None,
                    "scale": [0.75, 1.25],
                    "crop": [24, 24],
                    "hflip": 0.5,
                    "mean": [0.5] * 3,
                    "std": [0.25] * 3,
                },
            }
        ),
        "/unused",
    )
    train, val = build_dataset(cfg, "train", train=True), build_dataset(cfg, "val", train=False)
    image, mask = train[0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32 and mask.dtype == torch.int64
    image, mask = val[0]
    assert image.shape == (3, 32, 32) and type(image) is torch.Tensor
    with pytest.raises(DataError, match="no split"):
        build_dataset(cfg, "test", train=False)


def test_step_sampler_is_resumable():
    full = StepBatchSampler(10, 4, seed=3)
    batches = [b for _, b in zip(range(7), full)]
    resumed = StepBatchSampler(10, 4, seed=3, start_step=4)
    assert [b for _, b in zip(range(3), resumed)] == batches[4:]
    flat = sum(batches, [])
    assert sorted(flat[:10]) == list(range(10))  # each epoch is a permutation
    assert all(len(b) == 4 for b in batches)


def test_auto_crop_and_cache_follow_the_images(synth_root):
    from segaudit.core.config import compose

    cfg = compose(["dataset=folder", f"dataset.root={synth_root}"])
    assert cfg.dataset.transform.crop == "auto" and cfg.dataset.cache_in_memory == "auto"
    prepared = prepare_dataset(cfg.dataset, "/unused")
    assert list(prepared.transform.crop) == [32, 32]  # never larger than the 32 px images
    assert prepared.cache_in_memory is True  # 16 tiny images fit in memory
    big = compose(["dataset=folder", f"dataset.root={synth_root}", "dataset.transform.resize=[600,1200]"])
    assert list(prepare_dataset(big.dataset, "/unused").transform.crop) == [512, 512]
