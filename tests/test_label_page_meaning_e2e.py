"""What the labelling page says, in a real browser: Chromium through Playwright against `steel-defect label`.

The queue built in the background while the page is up (held half-way by the ``batch:queue``
pause point, so its progress is seen, never raced), the class in doubt and its heat map, the frame
list that jumps to any frame and filters by status, defect-free as its own status, and the first
run without a model. Synthetic frames and an untrained segmenter only.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import pytest

from steel_defect.labels.store import LabelStore
from tests.conftest import random_checkpoints
from tests.test_label_e2e import _screenshot
from tests.test_labels import _frames, running_label_server
from tests.test_webapp_e2e import SCREENSHOT_DIR

pytestmark = pytest.mark.e2e


def promote_untrained_model(root: Path, db: Path) -> Path:
    """An untrained segmenter's tuned pipeline (threshold 0.5) recorded and promoted in ``db``, as
    ``labels train`` leaves one; its postprocessing.yml."""
    from steel_defect.inference.pipeline import build_predictor, save_spec

    checkpoints = random_checkpoints(root, seg_prior=0.3)
    predictor = build_predictor(None, [checkpoints["seg"]], untuned=True, tta=(), backend="torch")
    folds = root / "folds.csv"
    folds.write_text("ImageId,fold\n")
    spec = save_spec(
        root / "postprocessing.yml",
        predictor.post,
        predictor.segmenters,
        (),
        "none",
        1,
        folds,
        hashlib.sha256(folds.read_bytes()).hexdigest(),
    )
    with LabelStore.open(db) as store:
        oof = {"mean_dice": 0.8, "empty": 0.75, "per_class": {}}
        digest, counts = store.labels_digest(), store.labelled_counts()
        name = store.record_version("synthetic", digest, counts, oof, spec, 1.0)
        store.promote(name, "the test's model")
    return spec


def _wait(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _wait_for_text(page, selector: str, text: str) -> None:
    """Wait until ``selector`` shows ``text``; on a timeout, say what it showed instead."""
    try:
        page.wait_for_selector(f'{selector}:has-text("{text}")', timeout=20000)
    except Exception as err:
        raise AssertionError(f"{selector} never said {text!r}: {page.text_content(selector)!r}") from err


def test_the_queue_builds_while_the_page_is_up_then_names_the_doubt_and_the_list_jumps(tmp_path, browser):
    names = _frames(tmp_path / "frames", 3, seed=8)
    db = tmp_path / "labels.sqlite"
    promote_untrained_model(tmp_path / "model", db)
    marker = tmp_path / "paused"
    env = {
        **os.environ,
        "STEEL_DEFECT_TEST_PAUSE_AT": "batch:queue@1",
        "STEEL_DEFECT_TEST_PAUSE_FILE": str(marker),
    }
    extra = ("--backend", "torch", "--opts", "inference.batch_size=1")
    with running_label_server(tmp_path / "frames", db, *extra, env=env) as (url, _):
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url)
        page.wait_for_selector('#label-stage[data-ready="1"]')
        # the promoted version pre-labels (no --postprocessing given) and the build is held after 1 frame
        _wait(marker.is_file, "the queue build never reached its pause")
        _wait_for_text(page, "#stats-line", "building the queue: 1/3 frames scored")
        if SCREENSHOT_DIR:
            _screenshot(page, "label_queue_building.png")
        assert page.is_hidden("#doubt-line")
        marker.unlink()  # the build goes on
        page.wait_for_selector('#stats-line:has-text("3 of 3 left in the queue")')
        assert page.is_hidden("#queue-hint")
        page.wait_for_selector("#doubt-line:not([hidden])")
        shown = page.text_content("#frame-name")
        with LabelStore.open(db, readonly=True) as store:
            order = sorted(names, key=lambda n: store.queue_entry(n)["rank"])
            doubt = store.queue_entry(shown)["detail"]["doubt"]
            rank = store.queue_entry(shown)["rank"]
        side = "over" if doubt["peak"] >= doubt["threshold"] else "under"
        x, y = round(doubt["at"][0] * 1600), round(doubt["at"][1] * 256)
        text = page.text_content("#doubt-text")
        assert text.startswith(f"in doubt: class {doubt['class_id']} · ")
        assert f"(peak {doubt['peak']:.2f} {side} threshold 0.50), most doubtful at x {x}, y {y}" in text
        assert text.endswith(f"queue #{rank + 1} of 3")

        # the heat map of that class, from the page's model, at half the frame's size
        assert page.is_hidden("#doubt-layer")
        page.keyboard.press("h")
        page.wait_for_function(
            "() => { const i = document.getElementById('doubt-layer'); "
            "return !i.hidden && i.complete && i.naturalWidth === 800; }"
        )
        assert f"class_id={doubt['class_id']}" in page.get_attribute("#doubt-layer", "src")
        if SCREENSHOT_DIR:
            _screenshot(page, "label_doubt_heat.png")
        page.click("#doubt-heat")
        assert page.is_hidden("#doubt-layer")

        # the frame list, in queue order, jumps to any frame and the address names it
        page.keyboard.press("l")
        page.wait_for_selector('#frame-list[data-ready="1"]')
        rows = page.locator("#frame-list-body tr")
        assert [rows.nth(i).get_attribute("data-name") for i in range(3)] == order
        target = next(n for n in order if n != shown)
        page.click(f'#frame-list-body tr[data-name="{target}"]')
        page.wait_for_selector(f'#frame-name:text-is("{target}")')
        assert page.url.endswith(f"?frame={target}")
        assert page.get_attribute(f'#frame-list-body tr[data-name="{target}"]', "aria-current") == "true"
        if SCREENSHOT_DIR:
            _screenshot(page, "label_frame_list.png")

        # defect-free is its own status: the chip, the list and the counts
        page.keyboard.press("l")  # the list closes; keys go to the frame
        page.keyboard.press("0")
        page.wait_for_selector(f'#frame-name:not(:text-is("{target}"))')
        page.wait_for_selector('#stats-line:has-text("1 defect-free")')
        page.keyboard.press("l")
        page.select_option("#frame-list-filter", "defect-free")
        page.wait_for_selector(f'#frame-list-body tr[data-name="{target}"]')
        assert page.locator("#frame-list-body tr").count() == 1
        assert page.text_content(f'#frame-list-body tr[data-name="{target}"] .status-chip') == "defect-free"
        page.click(f'#frame-list-body tr[data-name="{target}"]')
        page.wait_for_selector(f'#frame-name:text-is("{target}")')
        assert page.text_content("#frame-status") == "defect-free"
        with LabelStore.open(db, readonly=True) as store:
            assert store.frame(target).status == "defect-free"
        assert errors == []
        page.close()


def test_a_first_run_without_a_model_names_the_command_instead_of_no_queue(tmp_path, browser):
    names = _frames(tmp_path / "frames", 2, seed=9)
    with running_label_server(tmp_path / "frames", tmp_path / "labels.sqlite") as (url, _):
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        page.goto(f"{url}/?frame={names[1]}")  # ?frame= opens that frame
        page.wait_for_selector('#label-stage[data-ready="1"]')
        assert page.text_content("#frame-name") == names[1]
        assert page.text_content("#model-line") == "no model yet: frames open empty"
        hint = page.locator("#queue-hint")
        assert hint.is_visible() and "no pre-labels and no queue" in hint.text_content()
        assert hint.locator("code").all_text_contents() == [
            "steel-defect labels train --db labels.sqlite",
            "--postprocessing WORK/postprocessing.yml",
        ]
        assert re.search(r"no queue: no model yet$", page.text_content("#stats-line"))
        assert page.is_hidden("#doubt-line")
        if SCREENSHOT_DIR:
            _screenshot(page, "label_no_model.png")
        page.close()
