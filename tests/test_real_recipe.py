"""The real-steel recipe learns real steel: trained and tuned on three quarters of the real
sample, it finds real defects on the quarter that neither training nor the threshold search
saw, and paints at most one false defect there.

Marked ``slow`` and ``realdata``: it trains four folds on a 2-core CPU (13 minutes on an
AVX2-only one) and skips with the reason when ``../shared/data/severstal_sample`` is absent,
as in a user's fresh clone. docs/real-steel.md gives the measured figures.

The demo ends by distilling the ensemble into one network for the line. Here its students train
2 epochs (``distill.epochs=2``, about 2 minutes more): this checks the distillation's mechanics on
real frames (the teacher's maps, the out-of-fold scheme, the tuned pipeline, both pipelines timed
side by side), not the student's Dice, which needs its 20 epochs and every frame held out
(``bench/real_holdout.py``, docs/inference.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from steel_defect.demo import run_demo
from steel_defect.evaluation.analysis import score_images
from steel_defect.inference.pipeline import read_tuned
from steel_defect.training.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

# What this quarter measured (seed 0, docs/real-steel.md): out of fold, over the 40 training
# frames where the thresholds are tuned, +0.035 on a CPU with AMX (bf16) and +0.033 on an
# AVX2-only one (fp32). On the 14 held-out frames +0.019 with AMX but -0.0005 on AVX2: there
# the kernels round differently, and one class-3 mask of 2,114 pixels on a defect-free frame,
# just above the searched minimum of 2,048, costs a whole frame (0.018 of the mean) against
# the 0.97 of Dice the masks earn on the frames with class 3. So a gain on 14 frames is not a
# property of the recipe on every machine (every frame held out once, bench/real_holdout.py,
# is the score); learning is: the out-of-fold gain, real defects found on unseen frames, and
# no more than one (frame, class) pair lost to a false defect.
OOF_GAIN = 0.02
ONE_PAIR = 1 / (4 * 14)


def test_real_recipe_finds_real_defects_on_unseen_real_frames(real_sample, tmp_path):
    summary = run_demo(real_sample, tmp_path / "real", recipe="real", seed=0, opts=["distill.epochs=2"])
    assert summary["test_images"] == 14
    # out of fold, the thresholds kept only what helped on the training quarters
    oof = summary["out_of_fold"]
    assert oof["images"] == 40
    assert oof["mean_dice"] - oof["empty"] > OOF_GAIN, oof
    assert oof["per_class"]["3"] > oof["empty_per_class"]["3"], oof
    # held out: at most one (frame, class) pair lost, and no class loses more than one frame
    assert summary["mean_dice"] >= summary["empty_baseline"] - ONE_PAIR - 1e-9, summary
    for class_id, dice in summary["per_class"].items():
        assert dice >= summary["empty_per_class"][class_id] - 1 / 14 - 1e-9, (class_id, summary)
    # the class-3 masks land on the real defects of frames they never saw
    scores, _, _ = score_images(summary["submission"], summary["test_truth"])
    found = scores.dice[scores.truth_area[:, 2] > 0, 2]
    assert len(found) == 6 and np.mean(found) > 0.1 and found.max() > 0.5, found
    state = load_checkpoint(summary["checkpoints"][0])
    assert state["trained_on"]["source"] == "real"
    assert state["trained_on"]["train_frames"] + state["trained_on"]["valid_frames"] == 40
    assert state["weights_source"]["kind"] == "package"
    assert state["out_of_fold"] == oof
    # the line pipeline: one distilled network, a tuned pipeline of its own
    line = summary["line"]
    assert summary["line_postprocessing"] == str(tmp_path / "real/line/postprocessing.yml")
    _, spec = read_tuned(summary["line_postprocessing"])
    assert len(spec.models) == 1 and spec.models[0].fold is None and spec.tta == ()
    maps = line["teacher_maps"]  # the four fold models, plain and flipped, once per frame
    assert maps["computed"] == 40 and maps["passes"] == 40 * 4 * 2
    assert line["out_of_fold"]["images"] == 40
    assert line["mean_dice"] >= summary["empty_baseline"] - ONE_PAIR - 1e-9, line
    # the same student with the teacher's thresholds, written beside it and scored on the same frames
    assert line["thresholds"] == "students" and set(line["alternatives"]) == {"teacher"}
    teacher = line["alternatives"]["teacher"]
    assert read_tuned(teacher["postprocessing"])[0] == read_tuned(summary["postprocessing"])[0]
    assert Path(teacher["submission"]).is_file() and teacher["out_of_fold"]["images"] == 40
    # both pipelines were timed side by side (the ratio is a bench figure, never a test's: 22x on a
    # busy 2-core AMD EPYC, one pass of a narrower network against 4 folds x 2 views)
    assert line["speed"]["line_frames_per_s"] > 0 and line["speed"]["ensemble_frames_per_s"] > 0
    record = json.loads((tmp_path / "real/line/distill.json").read_text())
    for k, fold in record["folds"].items():  # no frame scored by a student or teacher that saw it
        assert not set(fold["scored"]) & set(fold["learnt_from"])
        assert [t["fold"] for t in fold["teacher"]] == [int(k)]
        assert set(fold["scored"]) <= set(fold["teacher"][0]["valid_ids"])
