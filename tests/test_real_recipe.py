"""The real-steel recipe learns real steel: trained and tuned on three quarters of the real
sample, it beats all-empty masks on the quarter that neither training nor the threshold
search saw.

Marked ``slow`` and ``realdata``: it trains four folds on a 2-core CPU (about a quarter of an
hour) and skips with the reason when ``../shared/data/severstal_sample`` is absent, as in a
user's fresh clone. The README's "Real steel" section gives the measured figures.
"""

from __future__ import annotations

import pytest

from steel_defect.demo import run_demo
from steel_defect.training.checkpoint import load_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

# Held-out mean Dice above all-empty masks that the recipe must reach. One image's worth of
# gain on one class is 1 / (4 * 14) = 0.018 on the 14 held-out frames; the recipe measured
# +0.010 to +0.019 on this quarter over its runs and variants, and +0.019 to +0.036 on the four
# quarters (README, "Real steel"), so the guard asks for more than half an image's worth, with
# no class below empty masks (no false defects on unseen frames).
MARGIN = 0.009


def test_real_recipe_beats_empty_masks_on_unseen_real_frames(real_sample, tmp_path):
    summary = run_demo(real_sample, tmp_path / "real", recipe="real", seed=0)
    assert summary["test_images"] == 14
    gain = summary["mean_dice"] - summary["empty_baseline"]
    assert gain > MARGIN, summary
    for class_id, dice in summary["per_class"].items():
        assert dice >= summary["empty_per_class"][class_id] - 1e-9, (class_id, summary)
    assert summary["per_class"]["3"] > summary["empty_per_class"]["3"], summary
    # out of fold, the thresholds kept only what helped on the training quarters
    oof = summary["out_of_fold"]
    assert oof["images"] == 40
    assert oof["mean_dice"] > oof["empty"], oof
    state = load_checkpoint(summary["checkpoints"][0])
    assert state["trained_on"]["source"] == "real"
    assert state["trained_on"]["train_frames"] + state["trained_on"]["valid_frames"] == 40
    assert state["weights_source"]["kind"] == "package"
    assert state["out_of_fold"] == oof
