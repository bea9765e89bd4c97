"""What the prediction page says of its model and masks: a mask the post-processing emptied names
the step and the numbers, and the model panel names each network's fold and score in words.

Hand-made probability maps and checkpoint dicts with hand-computed answers; the browser side
(disabled sliders with their reason) is in test_predict_page_meaning_e2e.py.
"""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from steel_defect.inference.postprocess import NEVER, ClassParams, PostProcessing, postprocess, removals
from steel_defect.webapp.provenance import network_title, out_of_fold_text, validation_text


def test_an_emptied_mask_names_the_step_that_emptied_it_with_its_numbers():
    probs = np.zeros((4, 256, 1600), np.uint8)
    probs[0, 100, 100:412] = 148  # class 1: one line of 312 px at 0.58, under min area 600
    probs[1, 10:14, 10:14] = 200  # class 2: 16 px, but the class is switched off
    probs[2, 50:53, 50:53] = 153  # class 3: two 9-px spots under a min region of 20
    probs[2, 150:153, 900:903] = 140
    probs[3, 0:40, 0:40] = 230  # class 4: 1,600 px, kept
    post = PostProcessing(
        (
            ClassParams(0.5, min_component=0, min_area=600),
            ClassParams(0.5, 0, NEVER),
            ClassParams(0.5, min_component=20),
            ClassParams(0.5, min_component=20, min_area=600),
        )
    )
    assert postprocess(probs, post)[:3].sum() == 0 and postprocess(probs, post)[3].sum() == 1600
    why = removals(probs, post)
    assert why[0] == {"pixels": 312, "threshold": 0.5, "peak": 0.5804, "by": "min_area", "limit": 600}
    assert why[1] == {"pixels": 16, "threshold": 0.5, "peak": 0.7843, "by": "off", "limit": NEVER}
    assert why[2] == {
        "pixels": 18,
        "threshold": 0.5,
        "peak": 0.6,
        "by": "min_component",
        "limit": 20,
        "largest": 9,
    }
    assert why[3] is None  # kept
    # a peak under the threshold has nothing to explain; the gates come first, in postprocess's order
    assert removals(np.zeros((4, 8, 8), np.uint8), post) == [None] * 4
    gated = PostProcessing((ClassParams(0.5, cls_threshold=0.6), *post.classes[1:]))
    first = removals(probs, gated, np.array([0.4, 0.9, 0.9, 0.9]))[0]
    assert first["by"] == "cls_threshold" and first["value"] == 0.4 and first["limit"] == 0.6
    top = PostProcessing((ClassParams(0.5, top_threshold=0.7), *post.classes[1:]))
    assert removals(probs, top)[0]["by"] == "top_threshold"


def test_the_model_panel_names_each_fold_and_its_scores_in_words():
    config = {"folds": {"valid_fold": 2, "n_splits": 4}}
    assert network_title("seg", "unet-resnet18", config) == "fold 2 of 4 · segmenter unet · resnet18"
    assert network_title("cls", "resnet18", {}) == "classifier resnet18"
    metrics = {"loss": 0.1234, "iou": 0.6121, "dice": 0.8, "dice/1": 0.5, "lr/all": 0.001}
    assert (
        validation_text(metrics, 12)
        == "scored IoU 0.612, Dice 0.800, loss 0.123 on its held-out fold (epoch 12)"
    )
    assert validation_text({}, 0) == "no validation score recorded (epoch 0)"
    oof = {
        "mean_dice": 0.812,
        "empty": 0.796,
        "images": 54,
        "per_class": {"1": 0.95, "3": 0.6},
        "empty_per_class": {"1": 0.95, "3": 0.55},
    }
    assert out_of_fold_text(oof) == (
        "out of fold, after the threshold search: Dice 0.812 vs 0.796 for empty masks on 54 frames "
        "(class 1 0.950 vs 0.950, class 3 0.600 vs 0.550)"
    )
    assert out_of_fold_text(None) is None and out_of_fold_text({"mean_dice": 0.8}) is None


def test_the_api_reports_the_removal_and_the_words(tmp_path):
    from steel_defect.inference.predictor import Predictor
    from steel_defect.models.checkpoint import update_checkpoint
    from steel_defect.webapp.app import create_app
    from steel_defect.webapp.service import InferenceService
    from tests.conftest import random_checkpoints
    from tests.test_labels import _frames

    seg = random_checkpoints(tmp_path, seg_prior=0.3)["seg"]
    update_checkpoint(seg, metrics={"iou": 0.5, "loss": 0.25})
    # class 1 at threshold 0.3 and a min area of a whole frame less one pixel: emptied by min area
    post = PostProcessing((ClassParams(0.3, 0, NEVER - 1), *(ClassParams(0.5),) * 3))
    client = TestClient(create_app(InferenceService(Predictor([seg], post, tta=()))))
    model = client.get("/api/model").json()
    assert model["checkpoints"][0]["title"] == "fold 0 of 3 · segmenter unet · resnet18"
    assert (
        model["checkpoints"][0]["validation"] == "scored IoU 0.500, loss 0.250 on its held-out fold (epoch 0)"
    )
    name = _frames(tmp_path / "frames", 1, seed=3)[0]
    with open(tmp_path / "frames" / name, "rb") as handle:
        answer = client.post("/api/predict", files={"files": (name, handle, "image/jpeg")}).json()
    first = answer["images"][0]["classes"][0]
    assert first["area"] == 0 and first["max_pixel_probability"] >= 0.3
    assert first["removed"]["by"] == "min_area" and first["removed"]["limit"] == NEVER - 1
    assert 0 < first["removed"]["pixels"] < NEVER - 1
    # a page override that keeps the mask leaves nothing to explain
    kept = client.post(
        f"/api/results/{answer['images'][0]['id']}/postprocess", json={"classes": {"1": {"min_area": 0}}}
    ).json()
    assert kept["classes"][0]["removed"] is None and kept["classes"][0]["area"] == first["removed"]["pixels"]
