"""``data.normalize_on_device``: the loader hands over uint8 batches and the training device runs
the last step, Normalize, to the same float32 values, so training is unchanged bit for bit."""

from __future__ import annotations

import pytest
import torch

from steel_defect.config import load_config
from steel_defect.config.errors import ComponentError
from steel_defect.data.folds import split_folds
from steel_defect.data.loaders import build_datasets, device_normalizers, normalize_batch
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.models.checkpoint import load_checkpoint
from steel_defect.training.runner import train
from tests.conftest import REPO, SMALL_OPTS

# A crop, flips and a brightness jitter before Normalize: the train side's random draws must be
# the same with and without the option.
TRAIN = (
    "transforms.train=[{name: RandomCrop, params: {height: 256, width: 512}}, "
    "{name: HorizontalFlip, params: {p: 0.5}}, {name: RandomBrightnessContrast, params: {p: 0.75}}, "
    "{name: Normalize, params: {mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3]}}]"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("device_normalize")
    write_synthetic_dataset(root / "data", n=12, seed=3, test_fraction=0.0)
    return root


def _cfg(root, *opts, work="work"):
    cfg = load_config(
        REPO / "configs/demo/synth_seg.yml",
        [f"paths.data_dir={root / 'data'}", f"paths.work_dir={root / work}", *SMALL_OPTS, *opts],
    )
    split_folds(cfg)
    return cfg


def test_uint8_items_normalised_on_the_device_equal_the_loaders_floats(data):
    plain = build_datasets(_cfg(data, TRAIN))
    cfg = _cfg(data, TRAIN, "data.normalize_on_device=true")
    uint8, normalizers = build_datasets(cfg), device_normalizers(cfg)
    for side in ("train", "valid"):
        for k in range(len(plain[side])):
            want, got = plain[side][k], uint8[side][k]
            assert got["image"].dtype == torch.uint8 and got["mask"].dtype == torch.uint8
            image = normalize_batch(got["image"][None], normalizers[side])[0]
            assert image.dtype == torch.float32 and torch.equal(image, want["image"]), (side, k)
            assert torch.equal(got["mask"].float(), want["mask"])


def test_training_is_the_same_bit_for_bit(data):
    opts = ["train.epochs=1", "train.max_train_batches=2", "train.save_top_k=0"]
    runs = {}
    for flag in ("false", "true"):
        cfg = _cfg(data, *opts, f"data.normalize_on_device={flag}", work=f"work_{flag}")
        runs[flag] = load_checkpoint(train(cfg, fold=0)["run_dir"] + "/checkpoints/last.pth")
    before, after = runs["false"]["model_state"], runs["true"]["model_state"]
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert runs["true"]["config"]["transforms"]["valid"][-1]["name"] == "Normalize"  # inference keeps it


def test_a_list_that_does_not_end_in_a_plain_normalize_is_refused_by_key(data):
    no_normalize = "transforms.train=[{name: Resize, params: {height: 64, width: 384}}]"
    with pytest.raises(ComponentError, match=r"transforms\.train.*plain Normalize"):
        build_datasets(_cfg(data, no_normalize, "data.normalize_on_device=true"))
    sometimes = "transforms.valid=[{name: Normalize, params: {p: 0.5}}]"
    with pytest.raises(ComponentError, match=r"transforms\.valid"):
        device_normalizers(_cfg(data, sometimes, "data.normalize_on_device=true"))
