"""What the prediction page says, in a real browser: the slider of a class that is off is disabled
and says why, a mask emptied by min area or min region says so with its numbers, and the model
panel names the fold and its scores in words. Chromium through Playwright against `steel-defect
serve` on a tuned pipeline of an untrained segmenter; synthetic example frames only.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import random_checkpoints
from tests.test_webapp_e2e import SCREENSHOT_DIR, _serve

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tuned_server(tmp_path_factory):
    """Classes 2 (not learnt) and 4 (no gain) switched off; class 1 emptied by a min area of a
    whole frame less a pixel, class 3 by a min region as large."""
    from steel_defect.inference.pipeline import save_spec
    from steel_defect.inference.postprocess import NEVER, ClassParams, PostProcessing
    from steel_defect.inference.predictor import Predictor
    from steel_defect.models.checkpoint import update_checkpoint

    root = tmp_path_factory.mktemp("e2e_meaning")
    seg = random_checkpoints(root, seg_prior=0.3)["seg"]
    unlearnt = {"2": {"defect_images": 4, "peak_on_defects": 0.03, "lowest_threshold": 0.3}}
    oof = {"mean_dice": 0.812, "empty": 0.796, "images": 40, "unlearnt": unlearnt}
    update_checkpoint(seg, out_of_fold=oof, metrics={"iou": 0.612, "loss": 0.25})
    off = ClassParams(0.5, 0, NEVER)
    post = PostProcessing((ClassParams(0.3, 0, NEVER - 1), off, ClassParams(0.3, NEVER - 1, 0), off))
    probe = Predictor([seg], tta=())
    spec = save_spec(root / "post.yml", post, probe.segmenters, (), "none", 1, root / "folds.csv", "x")
    with _serve(root, "--postprocessing", str(spec), "--backend", "torch") as url:
        yield url


def test_off_sliders_are_disabled_with_their_reason_and_emptied_masks_say_why(
    tuned_server, browser, tmp_path
):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(tuned_server)
    page.wait_for_selector('#model-line[data-state="ready"]')
    page.click("#example-buttons button >> nth=0")
    page.wait_for_selector('#viewer[data-state="ready"]')
    row = {c: page.locator(f'#classes tr[data-class="{c}"]') for c in (1, 2, 3, 4)}
    slider = {c: row[c].locator('input[type="range"]') for c in row}
    assert slider[1].is_enabled() and slider[3].is_enabled()
    assert slider[2].is_disabled() and slider[4].is_disabled()
    assert (
        row[2].locator(".why-off").text_content()
        == "not learnt yet: needs more labelled frames of this class"
    )
    assert (
        row[2]
        .locator(".threshold")
        .get_attribute("title")
        .startswith(
            "not learnt yet: on its 4 out-of-fold frames with this class the model never reached 0.30"
        )
    )
    assert row[4].locator(".why-off").text_content().startswith("switched off by the threshold search")
    assert row[4].locator(".threshold").get_attribute("title").startswith("min area is larger than a frame")
    assert row[1].locator(".why-off").is_hidden()

    # the emptied masks, in the server's numbers
    classes = page.evaluate("() => window.state.items[0].result.classes")
    one, three = classes[0]["removed"], classes[2]["removed"]
    assert classes[0]["area"] == 0 and one["by"] == "min_area"
    assert row[1].locator(".removed").text_content() == (
        f"peak {one['peak']:.2f} over 0.30, but its {one['pixels']:,} px are under min area 409,600: removed"
    )
    assert classes[2]["area"] == 0 and three["by"] == "min_component"
    assert re.fullmatch(
        rf"peak {three['peak']:.2f} over 0\.30, but its {three['pixels']:,} px lie in regions under "
        rf"min region 409,600 px \(the largest {three['largest']:,} px\): removed",
        row[3].locator(".removed").text_content(),
    )
    # an override that keeps the mask drops the note
    page.click("text=Post-processing per class")
    page.fill('#post-table input[data-class="1"][data-field="min_area"]', "0")
    page.press('#post-table input[data-class="1"][data-field="min_area"]', "Enter")
    page.wait_for_function(
        "() => window.state.items[0].result.classes[0].area > 0 && "
        "document.querySelector('#classes tr[data-class=\"1\"] .removed') === null"
    )

    # the model panel: the fold and its scores in words, the ensemble's out-of-fold score
    page.click("#model-details summary")
    network = page.locator("#model-body .networks li").first
    assert network.locator("strong").text_content() == "fold 0 of 3 · segmenter unet · resnet18"
    assert "— scored IoU 0.612, loss 0.250 on its held-out fold (epoch 0)" in network.text_content()
    assert page.text_content("#model-body .oof") == (
        "Out of fold, after the threshold search: Dice 0.812 vs 0.796 for empty masks on 40 frames"
    )
    shot = Path(SCREENSHOT_DIR or tmp_path) / "gui_meaning.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert errors == [], errors
    page.close()
