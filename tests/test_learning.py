"""It learns: short CPU runs on synthetic data beat the trivial predictions on the same images.

Marked ``slow`` (a few minutes): ``make test`` runs them after the default suite, CI included.
"""

from __future__ import annotations

import numpy as np
import pytest

from steel_defect.config import load_config
from steel_defect.data.annotations import read_annotations
from steel_defect.data.folds import read_folds, split_folds, split_ids
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.inference.oof import search_thresholds
from steel_defect.training.checkpoint import load_checkpoint
from steel_defect.training.runner import train
from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    write_synthetic_dataset(root / "data", n=240, seed=11, test_fraction=0.25)  # the demo's size
    return root


def _cfg(data, config, *opts):
    name = config.split("/")[-1].removesuffix(".yml")
    cfg = load_config(
        REPO / config,
        [
            f"paths.data_dir={data / 'data'}",
            f"paths.work_dir={data / name}",
            f"paths.folds_csv={data / 'folds.csv'}",
            "folds.n_splits=4",
            *opts,
        ],
    )
    split_folds(cfg)
    return cfg


def test_classifier_beats_the_majority_label(data):
    cfg = _cfg(data, "configs/demo/synth_cls.yml")
    result = train(cfg, fold=0)
    metrics = load_checkpoint(f"{result['run_dir']}/checkpoints/best.pth")["metrics"]["valid"]
    _, valid_ids = split_ids(read_folds(cfg.paths.folds_csv), 0)
    labels = read_annotations(cfg.paths.train_csv).labels(valid_ids)
    flags = np.column_stack([~labels.any(axis=1), labels])
    majority_accuracy = np.maximum(flags.mean(axis=0), 1 - flags.mean(axis=0)).mean()
    # the majority label is "absent" for every defect class: F1 0 for each class that occurs
    majority_f1 = np.mean([0.0 if labels[:, c].any() else 1.0 for c in range(4)])
    assert metrics["accuracy"] > majority_accuracy, (metrics, majority_accuracy)
    assert metrics["f1"] > majority_f1, (metrics, majority_f1)


def test_segmenter_beats_all_empty_masks(data):
    cfg = _cfg(data, "configs/demo/synth_seg.yml")
    train(cfg, fold=0)
    summary = search_thresholds(cfg)
    # Predicting nothing scores the share of empty (image, class) pairs; the per-class
    # thresholds can always fall back to it, so beating it needs masks that match the truth.
    mean = summary["mean"]
    assert mean["best_dice"] > mean["empty_dice"] + 0.02, summary
    assert max(c["best_dice"] - c["empty_dice"] for c in summary["classes"].values()) > 0.05, summary
