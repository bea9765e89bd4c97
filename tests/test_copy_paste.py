"""Copy-paste of real defects: the bank comes from the training fold only, and a paste lands
exactly where its parameters say, in the image and in the masks."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from steel_defect.config import load_config
from steel_defect.config.errors import ComponentError
from steel_defect.data.copy_paste import CopyPaste, DefectBank
from steel_defect.data.folds import read_folds, split_folds, split_ids
from steel_defect.data.loaders import build_datasets
from steel_defect.data.transforms import build_transforms
from tests.conftest import REPO, SMALL_OPTS

COPY_PASTE = "{name: CopyPaste, params: {p: 1.0, max_pastes: 2, classes: [1, 2, 3, 4]}}"
RESIZE = "{name: Resize, params: {height: 64, width: 384}}"


def _frame(seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 200, (256, 1600, 3), dtype=np.uint8)
    masks = np.zeros((4, 256, 1600), np.uint8)
    masks[2, 100:110, 200:260] = 1  # a class 3 scratch: 600 pixels
    masks[2, 30:32, 900:903] = 1  # 6 pixels: below min_area, no piece
    masks[3, 150:200, 1000:1100] = 1  # a class 4 patch
    return image, masks


def test_the_bank_holds_one_piece_per_component_above_min_area():
    image, masks = _frame()
    bank = DefectBank.from_frames([("a.jpg", image, masks)], classes=[3, 4], min_area=16, margin=3)
    assert len(bank.by_class[3]) == 1 and len(bank.by_class[4]) == 1 and bank.sources == {"a.jpg"}
    piece = bank.by_class[3][0]
    assert piece.mask.shape == (16, 66) and piece.mask.sum() == 600
    assert np.array_equal(piece.image, image[97:113, 197:263])


def test_a_paste_lands_where_its_parameters_say_and_covers_the_other_classes():
    image, masks = _frame()
    bank = DefectBank.from_frames([("a.jpg", image, masks)], classes=[4], margin=3)
    step = CopyPaste(max_pastes=1, classes=[4], brightness=0.0, feather=0.0, flip=False, p=1.0)
    step.attach(bank, channels=[1, 2, 3, 4])
    step.set_random_seed(3)
    target = np.full((256, 1600, 3), 120, np.uint8)
    target_masks = np.zeros((256, 1600, 4), np.uint8)
    target_masks[:, :, 2] = 1  # class 3 everywhere, so the paste must cover part of it
    params = step.get_params_dependent_on_data({}, {"image": target})
    ((piece, _, y, x, _),) = params["pastes"]
    out_image, out_mask = step.apply(target, **params), step.apply_to_mask(target_masks, **params)
    h, w = piece.mask.shape
    expected = np.zeros((256, 1600), bool)
    expected[y : y + h, x : x + w] = piece.mask
    assert np.array_equal(out_mask[:, :, 3].astype(bool), expected)
    assert np.array_equal(out_mask[:, :, 2].astype(bool), ~expected)  # covered by the piece
    assert not out_mask[:, :, :2].any()
    # no feather: the piece's own pixels change, nothing else; grey levels matched to the target's
    changed = (out_image != target).any(axis=-1)
    assert changed[expected].mean() > 0.9 and not changed[~expected].any()
    source = image[150:200, 1000:1100].astype(float)
    assert abs(out_image[expected].mean() - (source.mean() + 120 - image[147:203, 997:1103].mean())) < 30


def test_pastes_repeat_with_the_seed_and_avoid_the_black_edge():
    image, masks = _frame()
    bank = DefectBank.from_frames([("a.jpg", image, masks)], classes=[3, 4])
    target = np.full((256, 1600, 3), 120, np.uint8)
    target[:, :1200] = 0  # off the sheet: only the right quarter is steel
    runs = []
    for _ in range(2):
        step = CopyPaste(max_pastes=2, classes=[3, 4], p=1.0)
        step.attach(bank, channels=[1, 2, 3, 4])
        out = A.Compose([step], seed=11)(image=target, mask=np.zeros((256, 1600, 4), np.uint8))
        runs.append(out)
    assert np.array_equal(runs[0]["image"], runs[1]["image"])
    assert np.array_equal(runs[0]["mask"], runs[1]["mask"])
    pasted = runs[0]["mask"].any(axis=-1)
    assert pasted.any() and pasted[:, :1200].sum() < 0.5 * pasted.sum()


def test_a_step_without_its_bank_refuses_to_run():
    step = CopyPaste(p=1.0)
    with pytest.raises(RuntimeError, match="no defect bank"):
        A.Compose([step])(image=np.zeros((256, 1600, 3), np.uint8), mask=np.zeros((256, 1600, 4), np.uint8))


def test_copy_paste_is_refused_outside_the_training_pipeline_and_checks_its_params():
    with pytest.raises(ComponentError, match=r"transforms.valid.*training augmentation"):
        build_transforms([{"name": "CopyPaste"}], "transforms.valid")
    with pytest.raises(ComponentError, match=r"transforms.train\[0\].params.max_paste"):
        build_transforms([{"name": "CopyPaste", "params": {"max_paste": 2}}], "transforms.train")
    with pytest.raises(ComponentError, match="classes must be"):
        build_transforms([{"name": "CopyPaste", "params": {"classes": [5]}}], "transforms.train")


def test_the_bank_never_holds_a_frame_of_the_fold_being_scored(tiny_synth):
    root = tiny_synth
    cfg = load_config(
        REPO / "configs/demo/synth_seg.yml",
        [
            f"paths.data_dir={root / 'data'}",
            f"paths.folds_csv={root / 'cp_folds.csv'}",
            f"paths.work_dir={root / 'cp'}",
            *SMALL_OPTS,
            f"transforms.train=[{COPY_PASTE}, {RESIZE}, {{name: Normalize}}]",
        ],
    )
    split_folds(cfg)
    folds = read_folds(cfg.paths.folds_csv)
    for fold in range(cfg.folds.n_splits):
        train_ids, valid_ids = split_ids(folds, fold)
        datasets = build_datasets(cfg, valid_fold=fold)
        step = next(t for t in datasets["train"].transforms.transforms if isinstance(t, CopyPaste))
        assert step.bank is not None and len(step.bank) > 0
        assert step.bank.sources <= set(train_ids)
        assert not step.bank.sources & set(valid_ids), f"fold {fold}: a validation frame is in the bank"
        item = datasets["train"][0]  # and the pipeline runs
        assert item["image"].shape[-2:] == (64, 384)
