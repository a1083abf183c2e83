"""`ContentCheck` inside a real Lightning fit on the colour scenes (known truth): a clean
pipeline raises no flag at any of 12 validations; one whose training masks sit on other
images is flagged three doublings of training after it learned where classes sit, and
stopped; the logged values are `segaudit audit`'s on the saved model."""

import pandas as pd
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from expected import NO_ALIGNED_CONTENT, SHARED_CROP, assert_check_matches_audit, assert_flagged_once_learning_stops
from segaudit.core.config import compose, load_group_option
from segaudit.core.errors import ConfigError
from segaudit.data import build_dataset, prepare_dataset

L = pytest.importorskip("lightning")
from segaudit.integrations.lightning import ContentCheck  # noqa: E402

SCENES = ["dataset.generate.n_train=96", "dataset.generate.n_val=32", "dataset.generate.n_test=4"]


class Segmenter(L.LightningModule):
    def __init__(self, num_classes: int):
        super().__init__()
        torch.manual_seed(0)
        self.net = smp.Unet(
            "resnet18", encoder_weights=None, classes=num_classes, encoder_depth=3, decoder_channels=(32, 16, 8)
        )

    def forward(self, images):
        return self.net(images)

    def training_step(self, batch, index):
        images, masks = batch
        loss = F.cross_entropy(self(images), masks, ignore_index=255)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, index):
        images, masks = batch
        self.log("val_loss", F.cross_entropy(self(images), masks, ignore_index=255))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


class MasksOfOthers(Dataset):
    """Each image with the mask of the next one, each drawn with its own random crop: image
    and mask loaders zipped, each shuffled by itself."""

    def __init__(self, split: Dataset):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, index):
        return self.split[index][0], self.split[(index + 1) % len(self.split)][1]


class Scenes(L.LightningDataModule):
    """The scenes as a user's datamodule would serve them; `misaligned`: every training
    mask paired with another scene's image (a broken pipeline), each drawn with its own
    crop (`zipped`) or both with one crop (`shared_crop`: masks misordered, then the joint
    augmentation)."""

    def __init__(self, dcfg, misaligned: str | None = None):
        super().__init__()
        self.dcfg, self.misaligned = dcfg, misaligned

    def train_dataloader(self):
        pairing = load_group_option("condition", "shuffled" if self.misaligned == "shared_crop" else "real")
        train = build_dataset(self.dcfg, "train", train=True, condition=pairing)
        if self.misaligned == "zipped":
            train = MasksOfOthers(train)
        return DataLoader(train, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))

    def val_dataloader(self):
        return DataLoader(build_dataset(self.dcfg, "val", train=False), batch_size=8)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    settings = [f"paths.cache={cache}", *SCENES]
    return settings, prepare_dataset(compose(settings).dataset, cache)


def _fit(dcfg, tmp_path, misaligned: str | None, epochs: int = 12, every: int = 1, **check):
    callback = ContentCheck(num_classes=8, runs=str(tmp_path / "runs"), **check)
    trainer = L.Trainer(
        max_epochs=epochs,  # 12 batches an epoch
        check_val_every_n_epoch=every,
        log_every_n_steps=4,
        callbacks=[callback],
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="csv"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    module = Segmenter(8)
    L.seed_everything(0)
    trainer.fit(module, datamodule=Scenes(dcfg, misaligned))
    return trainer, module, callback


def test_a_clean_fit_has_no_flag_and_its_logger_shows_the_evidence(scenes, tmp_path):
    settings, dcfg = scenes
    unaugmented = build_dataset(dcfg, "train", train=False)
    masks = [unaugmented[i][1] for i in range(len(unaugmented))]
    trainer, module, callback = _fit(dcfg, tmp_path, None, on_flag="stop", train_masks=masks, strategy="clean")
    assert trainer.global_step == 144 and len(callback.results) == 12
    assert [r.flags for r in callback.results] == [[]] * 12  # no flag at any validation
    # the real images' predictions were those of the fit's own validation pass
    assert {r.real_pass for r in callback.results} == {"trainer"}
    last = callback.results[-1]
    assert last.scalars()["segaudit/content_bits_low"] > 0

    logged = pd.read_csv(next((tmp_path / "csv").rglob("metrics.csv")))
    assert {"segaudit/content_bits", "segaudit/content_bits_low", "segaudit/miou_noise", "train_loss"} <= set(logged)
    at_end = logged.dropna(subset=["segaudit/content_bits"]).iloc[-1]
    assert at_end["segaudit/content_bits"] == pytest.approx(last.scalars()["segaudit/content_bits"])

    # the same model, saved and audited by the command line on the same 32 val images
    module.net.save_pretrained(str(tmp_path / "model"))
    assert_check_matches_audit(last, tmp_path / "model", settings, tmp_path / "runs", "clean")


@pytest.mark.parametrize(
    ("misaligned", "because", "doublings"), [("zipped", NO_ALIGNED_CONTENT, 3), ("shared_crop", SHARED_CROP, 1)]
)
def test_masks_on_other_images_raise_the_flag_and_stop_the_fit(scenes, tmp_path, misaligned, because, doublings):
    _, dcfg = scenes
    with pytest.warns(UserWarning, match="segaudit content check"):
        # a validation every 24 steps to step 720: the fault counts three doublings of
        # training after the location is learned (step 48 zipped); a shared crop may be
        # caught sooner, location carrying the score at two checks a doubling apart
        trainer, _, callback = _fit(dcfg, tmp_path, misaligned, epochs=60, every=2, on_flag="stop")
    assert_flagged_once_learning_stops(callback.results, because, doublings)
    assert trainer.global_step < 720


class NetInside(Segmenter):
    """A module that calls its network in its steps and has no forward of its own."""

    forward = L.LightningModule.forward

    def training_step(self, batch, index):
        return F.cross_entropy(self.net(batch[0]), batch[1], ignore_index=255)

    def validation_step(self, batch, index):
        self.log("val_loss", F.cross_entropy(self.net(batch[0]), batch[1], ignore_index=255))


def _short_fit(dcfg, module, precision: str = "32-true", **check) -> ContentCheck:
    """Two training steps and one validation of one batch (the 8 images checked)."""
    callback = ContentCheck(num_classes=8, subset=8, runs=None, **check)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        precision=precision,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=Scenes(dcfg))
    return callback


def test_a_module_without_forward_is_told_to_name_its_network(scenes):
    _, dcfg = scenes
    with pytest.raises(ConfigError, match=r"NetInside has no forward\(\).*network=lambda module: module.net"):
        _short_fit(dcfg, NetInside(8))
    (result,) = _short_fit(dcfg, NetInside(8), network=lambda module: module.net).results
    assert result.step == 2 and "segaudit/content_bits" in result.scalars()
    assert result.real_pass == "trainer"  # the network's forward passes in the validation


def test_a_mixed_precision_validation_gives_the_check_its_real_pass_and_autocast(scenes):
    _, dcfg = scenes
    (result,) = _short_fit(dcfg, Segmenter(8), precision="bf16-mixed").results
    assert (result.real_pass, result.autocast) == ("trainer", "bfloat16")
