"""The semi-supervised term (mean teacher, FixMatch): checked at load, never fed a labelled frame,
saved for --resume."""

from __future__ import annotations

import shutil

import pytest
import torch

from steel_defect.config import ConfigError
from steel_defect.config.errors import ComponentError
from steel_defect.data.folds import read_folds, split_folds
from steel_defect.models.checkpoint import load_checkpoint
from steel_defect.training.runner import train
from steel_defect.training.semi import SemiTerm, unlabelled_paths
from tests.conftest import tiny_cfg

TINY = [
    "train.epochs=2",
    "train.max_train_batches=2",
    "train.max_valid_batches=1",
    "train.deterministic=true",
]


def _semi(folder, **extra) -> str:
    items = {"name": "mean_teacher", "unlabelled": str(folder), "batch_size": 2, "rampup_epochs": 0, **extra}
    return "train.semi={" + ", ".join(f"{k}: {v}" for k, v in items.items()) + "}"


def test_the_semi_settings_are_checked_at_load(tiny_synth):
    unlabelled = tiny_synth / "data" / "test_images"
    cfg = tiny_cfg(tiny_synth, _semi(unlabelled))
    assert cfg.train.semi["ema"] == 0.99 and cfg.train.semi["batch_size"] == 2
    with pytest.raises(ComponentError, match="mean_teacher"):
        tiny_cfg(tiny_synth, _semi(unlabelled, name="meanteacher"))
    with pytest.raises(ConfigError, match=r"train\.semi\.unlabelled"):
        tiny_cfg(tiny_synth, _semi(tiny_synth / "nowhere"))
    with pytest.raises(ConfigError, match=r"train\.semi\.ema"):
        tiny_cfg(tiny_synth, _semi(unlabelled, ema=1.5))
    with pytest.raises(ComponentError, match=r"train\.semi.*weigth"):
        tiny_cfg(tiny_synth, _semi(unlabelled, weigth=2))
    fixmatch = tiny_cfg(tiny_synth, _semi(unlabelled, name="fixmatch"))
    assert (fixmatch.train.semi["ema"], fixmatch.train.semi["threshold"]) == (0.0, 0.95)
    with pytest.raises(ConfigError, match=r"train\.semi\.threshold"):
        tiny_cfg(tiny_synth, _semi(unlabelled, name="fixmatch", threshold=0.3))
    with pytest.raises(ComponentError, match=r"train\.semi.*threshold"):  # a FixMatch key only
        tiny_cfg(tiny_synth, _semi(unlabelled, threshold=0.9))


def test_fixmatch_learns_only_from_confident_pixels_the_strong_view_still_shows(tiny_synth, tmp_path):
    folds = f"paths.folds_csv={tmp_path / 'folds.csv'}"
    split_folds(tiny_cfg(tiny_synth, folds))
    semi = _semi(tiny_synth / "data" / "test_images", name="fixmatch", cutout=1.0)
    cfg = tiny_cfg(tiny_synth, folds, semi)
    term = SemiTerm(cfg, torch.nn.Conv2d(3, 4, 1))
    term.start_epoch(1)
    images = torch.ones((2, 3, 16, 32))
    view, keep = term.perturb(images)
    assert keep.shape == (2, 1, 16, 32) and (~keep).any(dim=(1, 2, 3)).all()  # a box erased in each
    assert torch.all(view[~keep.expand_as(view)] == 0) and not torch.equal(
        view[keep.expand_as(view)], images[keep.expand_as(images)]
    )
    targets = torch.full((2, 4, 16, 32), 0.6)  # unsure everywhere: no target, no loss
    logits = torch.zeros((2, 4, 16, 32), requires_grad=True)
    assert term.loss(logits, targets, keep).item() == 0
    targets[0, 2] = 0.99  # sure of class 3 on frame 0: the student is pulled up there, where kept
    loss = term.loss(logits, targets, keep)
    loss.backward()
    assert loss.item() > 0
    pulled = logits.grad[0, 2] < 0
    assert torch.equal(pulled, keep[0, 0]) and torch.all(logits.grad[1] == 0)


def test_no_frame_of_the_fold_split_reaches_the_unlabelled_term(tiny_synth, tmp_path):
    cfg = tiny_cfg(tiny_synth, f"paths.folds_csv={tmp_path / 'folds.csv'}")
    split_folds(cfg)
    labelled = list(read_folds(cfg.paths.folds_csv).ImageId)
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for path in (tiny_synth / "data" / "test_images").iterdir():
        shutil.copy(path, folder / path.name)
    for name in labelled[:3]:  # labelled frames, a validation one among them, dropped in by mistake
        shutil.copy(tiny_synth / "data" / "train_images" / name, folder / name)
    cfg = tiny_cfg(tiny_synth, f"paths.folds_csv={tmp_path / 'folds.csv'}", _semi(folder))
    kept = {p.name for p in unlabelled_paths(cfg)}
    assert kept == {p.name for p in (tiny_synth / "data" / "test_images").iterdir()}
    assert not kept & set(labelled)


@pytest.mark.parametrize("method", ["mean_teacher", "fixmatch"])
def test_training_with_the_term_saves_the_teacher_and_resumes_as_if_never_stopped(
    tiny_synth, tmp_path, method
):
    unlabelled = tiny_synth / "data" / "test_images"
    semi = _semi(unlabelled, weight=5.0, name=method)
    common = [f"paths.folds_csv={tmp_path / 'folds.csv'}", semi, *TINY]
    whole = tiny_cfg(tiny_synth, *common, f"paths.work_dir={tmp_path / 'whole'}")
    split_folds(whole)
    train(whole, fold=0)
    state = load_checkpoint(tmp_path / "whole" / "fold0" / "checkpoints" / "last.pth")
    assert all(h["train"]["consistency"] > 0 for h in state["history"])
    teacher, student = state["teacher_state"], state["model_state"]
    assert teacher.keys() == student.keys()
    moved = [k for k in student if student[k].is_floating_point() and not torch.equal(teacher[k], student[k])]
    # the mean teacher trails the student; FixMatch's (ema 0) is the student of the last step
    assert moved if method == "mean_teacher" else not moved

    parts = [*common, f"paths.work_dir={tmp_path / 'parts'}"]
    train(tiny_cfg(tiny_synth, *parts, "train.epochs=1"), fold=0)
    train(tiny_cfg(tiny_synth, *parts), fold=0, resume=True)
    resumed = load_checkpoint(tmp_path / "parts" / "fold0" / "checkpoints" / "last.pth")
    for key in ("model_state", "teacher_state"):
        for name, value in state[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}: {name}"
