"""Datasets load a tiny Severstal-layout folder into the expected tensors, masks and targets."""

from __future__ import annotations

import os
import re

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations' import would call the network

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from steel_defect.constants import IMAGE_HEIGHT, IMAGE_SHAPE, IMAGE_WIDTH
from steel_defect.data.annotations import read_annotations, resolve_image_ids
from steel_defect.data.datasets import (
    ClassificationDataset,
    ImageFolderDataset,
    SegmentationDataset,
)
from steel_defect.data.images import ImageReadError, read_image
from steel_defect.data.rle import rle_to_mask
from steel_defect.data.transforms import build_transforms

SAMPLE_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/severstal_sample"

# Class 3 on rows 50..99, columns 100..199 of defect.jpg: column-major, 1-based pixel
# numbers, so each column c contributes the run "c*256 + 51, 50".
CLASS3_RLE = " ".join(f"{c * IMAGE_HEIGHT + 51} 50" for c in range(100, 200))
# Classes 1 and 4 of two.jpg: a 3-pixel run at the very start and a full column 1599.
CLASS1_RLE = "1 3"
CLASS4_RLE = f"{1599 * IMAGE_HEIGHT + 1} {IMAGE_HEIGHT}"


@pytest.fixture()
def severstal(tmp_path):
    """A train_images folder with 3 images and a wide-layout train.csv; returns (dir, annotations)."""
    images_dir = tmp_path / "train_images"
    images_dir.mkdir()
    rng = np.random.default_rng(0)
    for name in ("clean.jpg", "defect.jpg", "two.jpg"):
        image = rng.integers(0, 120, (IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
        if name == "defect.jpg":
            image[50:100, 100:200] = 250  # the scratch the label describes
        assert cv2.imwrite(str(images_dir / name), image)
    rles = {"clean.jpg": ["", "", "", ""], "defect.jpg": ["", "", CLASS3_RLE, ""]}
    rles["two.jpg"] = [CLASS1_RLE, "", "", CLASS4_RLE]
    lines = ["ImageId_ClassId,EncodedPixels"]
    lines += [f"{image_id}_{c + 1},{rle}" for image_id, four in rles.items() for c, rle in enumerate(four)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    return images_dir, read_annotations(tmp_path / "train.csv")


def test_segmentation_item_has_tensors_and_the_decoded_mask(severstal):
    images_dir, annotations = severstal
    dataset = SegmentationDataset(["clean.jpg", "defect.jpg", "two.jpg"], images_dir, annotations)
    assert len(dataset) == 3
    item = dataset[1]
    assert item["image_id"] == "defect.jpg"
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, IMAGE_HEIGHT, IMAGE_WIDTH)
    assert item["mask"].dtype == torch.float32 and item["mask"].shape == (4, IMAGE_HEIGHT, IMAGE_WIDTH)
    # No Normalize configured: uint8 pixels are scaled to [0, 1].
    expected_image = read_image(images_dir / "defect.jpg").transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(item["image"].numpy(), expected_image, atol=1e-6)
    mask = item["mask"].numpy()
    np.testing.assert_array_equal(mask[2], rle_to_mask(CLASS3_RLE))
    assert mask[2].sum() == 50 * 100 and mask[2, 50:100, 100:200].all()
    assert mask[[0, 1, 3]].sum() == 0
    two = dataset[2]["mask"].numpy()
    assert two[0, :3, 0].tolist() == [1, 1, 1] and two[0].sum() == 3
    assert two[3, :, 1599].all() and two[3].sum() == IMAGE_HEIGHT
    assert dataset[0]["mask"].sum() == 0


def test_classification_targets_are_multi_hot_with_no_defect_first(severstal):
    images_dir, annotations = severstal
    dataset = ClassificationDataset(["clean.jpg", "defect.jpg", "two.jpg"], images_dir, annotations)
    targets = [dataset[i]["targets"] for i in range(3)]
    assert all(t.dtype == torch.float32 and t.shape == (5,) for t in targets)
    assert [t.tolist() for t in targets] == [[1, 0, 0, 0, 0], [0, 0, 0, 1, 0], [0, 1, 0, 0, 1]]
    assert dataset[1]["image"].shape == (3, IMAGE_HEIGHT, IMAGE_WIDTH)
    assert dataset[1]["image_id"] == "defect.jpg"


def test_targets_follow_a_crop_that_cuts_the_defect_out(severstal):
    images_dir, annotations = severstal
    # Columns 400..1199 keep none of defect.jpg's class 3 (columns 100..199) and none of
    # two.jpg's pixels (column 0 and column 1599).
    crop = build_transforms([{"name": "CenterCrop", "params": {"height": IMAGE_HEIGHT, "width": 800}}])
    dataset = ClassificationDataset(["defect.jpg", "two.jpg"], images_dir, annotations, crop)
    for i in range(2):
        item = dataset[i]
        assert item["image"].shape == (3, IMAGE_HEIGHT, 800)
        assert item["targets"].tolist() == [1, 0, 0, 0, 0]


def test_horizontal_flip_moves_mask_with_image(severstal):
    images_dir, annotations = severstal
    flip = build_transforms([{"name": "HorizontalFlip", "params": {"p": 1}}])
    plain = SegmentationDataset(["defect.jpg"], images_dir, annotations)[0]
    flipped = SegmentationDataset(["defect.jpg"], images_dir, annotations, flip)[0]
    torch.testing.assert_close(flipped["image"], plain["image"].flip(-1))
    torch.testing.assert_close(flipped["mask"], plain["mask"].flip(-1))
    # The bright scratch and its mask both now sit at columns 1400..1499.
    assert flipped["mask"][2, 50:100, 1400:1500].all()
    assert flipped["image"][:, 50:100, 1400:1500].mean() > 0.9


def test_normalize_from_transforms_is_not_rescaled(severstal):
    images_dir, annotations = severstal
    normalize = build_transforms([{"name": "Normalize", "params": {"mean": 0.5, "std": 0.5}}])
    item = SegmentationDataset(["defect.jpg"], images_dir, annotations, normalize)[0]
    raw = read_image(images_dir / "defect.jpg").transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_allclose(item["image"].numpy(), (raw / 255 - 0.5) / 0.5, atol=1e-5)


def test_grayscale_channel_count(severstal):
    images_dir, annotations = severstal
    item = SegmentationDataset(["defect.jpg"], images_dir, annotations, channels=1)[0]
    assert item["image"].shape == (1, IMAGE_HEIGHT, IMAGE_WIDTH)


def test_dataloader_collates_dict_batches(severstal):
    images_dir, annotations = severstal
    dataset = SegmentationDataset(["clean.jpg", "defect.jpg"], images_dir, annotations)
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["image"].shape == (2, 3, IMAGE_HEIGHT, IMAGE_WIDTH)
    assert batch["mask"].shape == (2, 4, IMAGE_HEIGHT, IMAGE_WIDTH)
    assert batch["image_id"] == ["clean.jpg", "defect.jpg"]


def _crop_batches(dataset, workers: int, epochs: int = 2) -> list[torch.Tensor]:
    from steel_defect.data.loaders import seed_worker_transforms

    torch.manual_seed(0)  # catalyst seeds torch at the start of a run
    loader = DataLoader(
        dataset,
        batch_size=2,
        num_workers=workers,
        worker_init_fn=seed_worker_transforms if workers else None,
    )
    return [batch["image"] for _ in range(epochs) for batch in loader]


def test_seeded_augmentations_repeat_across_runs_and_differ_across_workers(severstal):
    images_dir, annotations = severstal
    crop = [{"name": "RandomCrop", "params": {"height": 64, "width": 64}}]

    def dataset(seed):
        transforms = build_transforms(crop, seed=seed)
        return SegmentationDataset(["defect.jpg"] * 4, images_dir, annotations, transforms=transforms)

    first, again, other = (_crop_batches(dataset(seed), workers=0) for seed in (5, 5, 6))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    # Two workers: the same crops on a second run, yet not one worker's draws copied to the other
    # or repeated in the next epoch.
    run1, run2 = _crop_batches(dataset(5), workers=2), _crop_batches(dataset(5), workers=2)
    assert all(torch.equal(a, b) for a, b in zip(run1, run2, strict=True))
    assert not torch.equal(run1[0], run1[1])  # worker 0 vs worker 1, same image, same position
    assert not torch.equal(run1[0], run1[2])  # epoch 1 vs epoch 2 of worker 0


def test_corrupt_image_raises_with_its_path(severstal):
    images_dir, annotations = severstal
    (images_dir / "defect.jpg").write_bytes(b"\xff\xd8\xff this is not really a JPEG")
    dataset = SegmentationDataset(["defect.jpg"], images_dir, annotations)
    with pytest.raises(ImageReadError, match=re.escape(str(images_dir / "defect.jpg"))):
        dataset[0]


def test_missing_image_raises_with_its_path(severstal):
    images_dir, annotations = severstal
    dataset = ClassificationDataset(["absent.jpg"], images_dir, annotations)
    with pytest.raises(ImageReadError, match=re.escape(str(images_dir / "absent.jpg"))):
        dataset[0]


def test_wrong_size_image_names_path_and_both_sizes(severstal):
    images_dir, annotations = severstal
    cv2.imwrite(str(images_dir / "defect.jpg"), np.zeros((IMAGE_HEIGHT, 800, 3), np.uint8))
    dataset = SegmentationDataset(["defect.jpg"], images_dir, annotations)
    with pytest.raises(ImageReadError) as info:
        dataset[0]
    message = str(info.value)
    assert str(images_dir / "defect.jpg") in message
    assert "800x256" in message and "1600x256" in message


def test_image_folder_dataset_for_inference(severstal):
    images_dir, _ = severstal
    paths = sorted(images_dir.iterdir())
    dataset = ImageFolderDataset(paths)
    item = dataset[1]
    assert set(item) == {"image", "image_id"}
    assert item["image_id"] == "defect.jpg"
    assert item["image"].shape == (3, IMAGE_HEIGHT, IMAGE_WIDTH) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    flip = build_transforms([{"name": "HorizontalFlip", "params": {"p": 1}}])
    flipped = ImageFolderDataset(paths, transforms=flip, channels=1)[1]["image"]
    assert flipped.shape == (1, IMAGE_HEIGHT, IMAGE_WIDTH)


def test_image_folder_dataset_checks_or_skips_the_size(tmp_path):
    path = tmp_path / "small.jpg"
    cv2.imwrite(str(path), np.zeros((64, 100, 3), np.uint8))
    with pytest.raises(ImageReadError, match=r"small\.jpg: image is 100x64; expected 1600x256"):
        ImageFolderDataset([path])[0]
    assert ImageFolderDataset([path], expected_shape=None)[0]["image"].shape == (3, 64, 100)
    assert ImageFolderDataset([path], expected_shape=(64, 100))[0]["image_id"] == "small.jpg"


@pytest.mark.realdata
@pytest.mark.skipif(not SAMPLE_DIR.is_dir(), reason=f"real data sample not found at {SAMPLE_DIR}")
def test_real_sample_loads_and_masks_match_the_rles():
    annotations = read_annotations(SAMPLE_DIR / "train.csv")
    images_dir = SAMPLE_DIR / "train_images"
    image_ids = resolve_image_ids(annotations, images_dir)
    segmentation = SegmentationDataset(image_ids, images_dir, annotations)
    classification = ClassificationDataset(image_ids, images_dir, annotations)
    labels = annotations.labels(image_ids)
    assert labels.any(), "the sample should contain defects"
    for i, image_id in enumerate(image_ids):
        item = segmentation[i]
        assert item["image"].shape == (3, *IMAGE_SHAPE)
        expected = [int(rle_to_mask(rle).sum()) for rle in annotations.rles(image_id)]
        assert item["mask"].sum(dim=(1, 2)).int().tolist() == expected, image_id
        targets = classification[i]["targets"].tolist()
        assert targets == [float(not labels[i].any()), *map(float, labels[i])], image_id
