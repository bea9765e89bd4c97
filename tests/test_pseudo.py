"""Pseudo labels: the confidence rules, the labels written, extra sets mixed into training only."""

from __future__ import annotations

import csv
import json
from collections import Counter

import cv2
import numpy as np
import pytest
from torch.utils.data import ConcatDataset

from steel_defect.cli import main
from steel_defect.config import ConfigError, load_config
from steel_defect.data.annotations import read_annotations, write_annotations
from steel_defect.data.folds import read_folds, split_folds, split_ids
from steel_defect.data.images import read_image
from steel_defect.data.loaders import build_loaders
from steel_defect.data.rle import masks_to_rles
from steel_defect.data.sampling import MixSampler
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.inference.postprocess import ClassParams, PostProcessing
from steel_defect.inference.predictor import Prediction, Predictor
from steel_defect.inference.pseudo import PseudoRules, judge, pseudo_label
from steel_defect.training.checkpoint import load_checkpoint
from tests.conftest import REPO, random_checkpoints, tiny_cfg


def test_mix_sampler_draws_each_set_by_weight_and_repeats_per_seed_and_epoch():
    sampler = MixSampler([5, 4, 3], [1.0, 2.5, 0.0], seed=7)
    assert sampler.counts() == [5, 10, 0] and len(sampler) == 15
    first, second = list(sampler), list(sampler)
    for draw in (first, second):
        counts = Counter(draw)
        assert all(counts[i] == 1 for i in range(5))  # every labelled image once
        assert sorted(counts[i] for i in range(5, 9)) == [2, 2, 3, 3]  # 2.5 per extra image
        assert not set(draw) & {9, 10, 11}  # weight 0: never drawn
    assert first != second  # a new order every epoch ...
    again = MixSampler([5, 4, 3], [1.0, 2.5, 0.0], seed=7)
    assert list(again) == first and list(again) == second  # ... the same on a rerun
    again.set_epoch(0)
    assert list(again) == first
    assert list(MixSampler([5, 4, 3], [1.0, 2.5, 0.0], seed=8)) != first
    with pytest.raises(ValueError, match="one weight per set"):
        MixSampler([5, 4], [1.0], seed=0)


def test_extra_sets_join_training_only_and_never_replace_real_labels(tiny_synth):
    cfg = tiny_cfg(tiny_synth)
    split_folds(cfg)
    train_ids, valid_ids = split_ids(read_folds(cfg.paths.folds_csv), 0)
    test_ids = sorted(p.name for p in (tiny_synth / "data/test_images").glob("*.jpg"))
    # pseudo labels for the test frames, plus a wrong one for a validation frame
    images = tiny_synth / "extra_images"
    images.mkdir()
    for image_id in test_ids:
        (images / image_id).write_bytes((tiny_synth / "data/test_images" / image_id).read_bytes())
    (images / valid_ids[0]).write_bytes((tiny_synth / "data/train_images" / valid_ids[0]).read_bytes())
    write_annotations(
        tiny_synth / "extra.csv", [*test_ids, valid_ids[0]], [["", "", "1 5", ""]] * (len(test_ids) + 1)
    )
    extra = f"data.extra=[{{train_csv: {tiny_synth / 'extra.csv'}, train_images: {images}, weight: 2}}]"
    loaders = build_loaders(tiny_cfg(tiny_synth, extra), valid_fold=0)

    train = loaders["train"].dataset
    assert isinstance(train, ConcatDataset) and len(train.datasets) == 2
    assert train.datasets[0].image_ids == train_ids
    assert train.datasets[1].image_ids == test_ids  # the validation frame was left out
    assert loaders["valid"].dataset.image_ids == valid_ids
    drawn = [i for batch in loaders["train"] for i in batch["image_id"]]
    assert Counter(drawn) == Counter(train_ids + 2 * test_ids)  # 8 + 2 x 4 = 4 full batches: none dropped
    # without extra sets the loader is the plain shuffled one of before
    plain = build_loaders(cfg, valid_fold=0)["train"]
    assert plain.dataset.image_ids == train_ids and not isinstance(plain.dataset, ConcatDataset)


@pytest.mark.parametrize(
    "value, needle",
    [
        ("[{train_csv: a.csv, train_image: b}]", "did you mean 'train_images'"),
        ("[{train_csv: a.csv, train_images: b, weight: -1}]", r"data.extra\[0\].weight"),
        ("[{train_images: b}]", r"data.extra\[0\].train_csv"),
        ("[a.csv]", r"data.extra\[0\] must be a mapping"),
    ],
)
def test_bad_extra_entries_name_the_key(value, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(REPO / "configs/demo/synth_seg.yml", [f"data.extra={value}"])


def _prediction(peaks, painted, cls=None):
    probs = np.zeros((4, 4, 6), np.float32)
    probs[:, 0, 0] = peaks
    masks = np.zeros((4, 4, 6), np.uint8)
    masks[np.asarray(painted, bool), 0, 0] = 1
    return Prediction(probs, None if cls is None else np.asarray(cls, float), masks)


def test_rules_keep_only_confident_verdicts():
    rules = PseudoRules(upper=0.8, lower=0.2)
    assert judge(_prediction([0.9, 0.1, 0.0, 0.15], [1, 0, 0, 0]), rules) is None
    assert "class 1 painted" in judge(_prediction([0.7, 0.1, 0.0, 0.0], [1, 0, 0, 0]), rules)
    assert "class 4 empty" in judge(_prediction([0.9, 0.1, 0.0, 0.5], [1, 0, 0, 0]), rules)
    disagree = _prediction([0.9, 0.1, 0.0, 0.0], [1, 0, 0, 0], cls=[0.9, 0.7, 0.1, 0.1])
    assert "class 2: the classifier says present" in judge(disagree, rules)
    assert judge(disagree, PseudoRules(0.8, 0.2, agree=False)) is None
    with pytest.raises(ValueError, match="upper must be a probability"):
        PseudoRules(upper=1.3)


def test_pseudo_label_writes_the_kept_frames_labels(tiny_synth, tmp_path):
    checkpoints = random_checkpoints(tmp_path, seg_prior=0.3, exported=True)
    images = tiny_synth / "data/test_images"
    (tmp_path / "frames").mkdir()
    for path in images.glob("*.jpg"):
        (tmp_path / "frames" / path.name).write_bytes(path.read_bytes())
    cv2.imwrite(str(tmp_path / "frames" / "small.png"), np.zeros((10, 10), np.uint8))
    paint = PostProcessing((ClassParams(0.0), *(ClassParams(0.5, 0, 10**6) for _ in range(3))))
    predictor = Predictor([checkpoints["seg"]], paint, tta=())
    summary = pseudo_label(predictor, tmp_path / "frames", tmp_path / "out", PseudoRules(0.0, 1.0))
    n = len(list(images.glob("*.jpg")))
    assert summary["images"] == n + 1 and summary["kept"] == n and summary["per_class"]["1"] == n
    labels = read_annotations(tmp_path / "out/train.csv")
    full = masks_to_rles(np.stack([np.ones((256, 1600), np.uint8)] + [np.zeros((256, 1600), np.uint8)] * 3))
    assert all(labels.rles(i) == full for i in labels.image_ids)  # class 1 painted everywhere
    with open(tmp_path / "out/pseudo_labels.csv") as handle:
        rows = {r["ImageId"]: r for r in csv.DictReader(handle)}
    assert rows["small.png"]["kept"] == "0" and "unreadable" in rows["small.png"]["reason"]
    # untrained maps sit around 0.3: nothing is sure at upper 0.9, and the table says why
    strict = pseudo_label(predictor, tmp_path / "frames", tmp_path / "strict", PseudoRules(0.9, 0.1))
    assert strict["kept"] == 0 and read_annotations(tmp_path / "strict/train.csv").image_ids == []


@pytest.mark.slow  # a subprocess or the whole demo: minutes, run by `make test` after the default suite
def test_demo_second_round_trains_on_pseudo_labels(tmp_path, capsys):
    work = tmp_path / "demo"
    args = ["demo", "--work-dir", str(work), "--n", "24", "--epochs", "1"]
    # unlabelled frames of another synthetic set: the demo refuses a folder holding a frame it scores
    unlabelled = tmp_path / "unlabelled"
    write_synthetic_dataset(unlabelled, n=8, seed=1)
    assert main([*args, "--pseudo-images", str(unlabelled / "train_images")]) == 0
    out = capsys.readouterr().out
    assert "round 1:" in out and "round 2, +" in out
    summary = json.loads((work / "round2/summary.json").read_text())
    assert len(summary["rounds"]) == 2 and summary["mean_dice"] == summary["rounds"][1]["mean_dice"]
    pseudo = summary["rounds"][1]["pseudo"]
    trained_on = load_checkpoint(work / "round2/seg/fold0/checkpoints/best.pth")["trained_on"]
    assert trained_on["extra"][0]["frames"] == pseudo["kept"] and trained_on["extra"][0]["weight"] == 1.0


def test_a_frame_the_gate_closed_is_still_judged_by_its_maps(tiny_synth, tmp_path):
    """A closed classifier gate is no evidence of a defect-free frame: the maps must agree."""
    checkpoints = random_checkpoints(tmp_path, seg_prior=0.3, exported=True)  # untrained maps sit around 0.3
    closed = PostProcessing(tuple(ClassParams(0.5, cls_threshold=1.0) for _ in range(4)))
    predictor = Predictor([checkpoints["seg"], checkpoints["cls"]], closed, tta=())
    images = tiny_synth / "data/test_images"
    frames = [read_image(p) for p in sorted(images.glob("*.jpg"))[:2]]
    assert all(p.probs is None for p in predictor.predict(frames))  # predict itself skips them
    summary = pseudo_label(predictor, images, tmp_path / "out", PseudoRules(0.8, 0.2, agree=False))
    assert summary["images"] > 0 and summary["kept"] == 0
    with open(tmp_path / "out/pseudo_labels.csv") as handle:
        reasons = [r["reason"] for r in csv.DictReader(handle)]
    assert all("empty but its peak probability" in r and ">= lower 0.2" in r for r in reasons), reasons
