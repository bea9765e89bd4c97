"""The labelling page in a real browser: Chromium driven by Playwright against `steel-defect label`.

Strokes are drawn with the mouse at known positions; the expected pixels are computed here from
those positions and the brush's documented footprint (pixels whose centre lies within the radius
of the path), and encoded here too, with no help from the project's encoder. The RLE in the
database and in the export must equal them exactly, at 1:1 and at 2x zoom after a pan.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from steel_defect.data.annotations import read_annotations
from steel_defect.data.rle import mask_to_rle, rle_to_mask
from steel_defect.labels.store import LabelStore
from tests.test_labels import _frames, running_label_server
from tests.test_webapp_e2e import SCREENSHOT_DIR

pytestmark = pytest.mark.e2e
WIDTH, HEIGHT = 1600, 256
RADIUS = 8.0  # the page's default brush: 16 px across


def severstal_rle(mask: np.ndarray) -> str:
    """Column-major, 1-based ``start length`` runs, written out by hand for the test."""
    flat = mask.T.ravel()
    runs, start = [], None
    for index, value in enumerate(flat):
        if value and start is None:
            start = index
        elif not value and start is not None:
            runs += [start + 1, index - start]
            start = None
    if start is not None:
        runs += [start + 1, flat.size - start]
    return " ".join(map(str, runs))


def stroke_pixels(points: list[tuple[float, float]], radius: float = RADIUS) -> np.ndarray:
    """Pixels whose centre is within ``radius`` of the polyline through ``points`` (image
    coordinates), segment by segment as the pointer events arrive, the first point a disc."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    cx, cy = xs + 0.5, ys + 0.5
    mask = np.zeros((HEIGHT, WIDTH), bool)
    for (ax, ay), (bx, by) in zip([points[0], *points[:-1]], points, strict=True):
        dx, dy = bx - ax, by - ay
        length2 = dx * dx + dy * dy
        t = ((cx - ax) * dx + (cy - ay) * dy) / length2 if length2 > 0 else np.zeros_like(cx)
        t = np.clip(t, 0, 1)
        ex, ey = cx - (ax + t * dx), cy - (ay + t * dy)
        mask |= ex * ex + ey * ey <= radius * radius
    return mask


@pytest.fixture(scope="module")
def label_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("label")
    names = _frames(root / "frames", 4, seed=11)
    with running_label_server(root / "frames", root / "labels.sqlite") as (url, _):
        yield url, root, names


def _open(browser, url: str, name: str):
    page = browser.new_page(viewport={"width": 1800, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{url}/?frame={name}")
    page.wait_for_selector('#label-stage[data-ready="1"]')
    assert page.text_content("#frame-name") == name
    return page, errors


def _saved(page, version: int) -> None:
    page.wait_for_selector(f'#save-state[data-state="saved"][data-version="{version}"]')


def _drag(page, box: dict, points: list[tuple[float, float]], zoom: float = 1.0) -> None:
    """Press at the first image point, move through the others one event each, release."""
    client = [(box["x"] + x * zoom, box["y"] + y * zoom) for x, y in points]
    page.mouse.move(*client[0])
    page.mouse.down()
    for point in client[1:]:
        page.mouse.move(*point)
    page.mouse.up()


def _screenshot(page, name: str) -> None:
    """Keep the page as it looks (synthetic frames only) where STEEL_DEFECT_SCREENSHOTS says."""
    shot = Path(SCREENSHOT_DIR) / name
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)


def _db_masks(root: Path, name: str) -> list[str]:
    with LabelStore.open(root / "labels.sqlite", readonly=True) as store:
        return store.frame(name).masks


def test_a_stroke_erased_undone_and_redone_lands_exactly_in_the_database_and_the_export(
    label_server, browser
):
    url, root, names = label_server
    page, errors = _open(browser, url, names[0])
    page.click("#zoom-1")
    box = page.locator("#mask-layer").bounding_box()
    assert box["width"] == WIDTH and box["height"] == HEIGHT
    page.keyboard.press("3")
    brush = [(300.0 + 50 * i, 100.0) for i in range(9)]  # one horizontal scratch, 300 -> 700
    _drag(page, box, brush)
    _saved(page, 1)
    page.keyboard.press("e")
    eraser = [(500.0, 40.0 + 20 * i) for i in range(7)]  # a vertical cut through it
    _drag(page, box, eraser)
    _saved(page, 2)
    painted = stroke_pixels(brush)
    expected = painted & ~stroke_pixels(eraser)
    assert 0 < expected.sum() < painted.sum()
    assert _db_masks(root, names[0]) == ["", "", severstal_rle(expected), ""]
    page.keyboard.press("Control+z")
    _saved(page, 3)
    assert _db_masks(root, names[0]) == ["", "", severstal_rle(painted), ""]
    page.keyboard.press("Control+Shift+z")
    _saved(page, 4)
    assert _db_masks(root, names[0]) == ["", "", severstal_rle(expected), ""]
    page.click("#confirm")  # confirm and move on to the next frame
    page.wait_for_selector(f'#frame-name:not(:text-is("{names[0]}"))')
    out = root / "export"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "steel_defect.cli",
            "labels",
            "export",
            "--db",
            str(root / "labels.sqlite"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    exported = read_annotations(out / "train.csv")
    assert exported.rles(names[0]) == ["", "", severstal_rle(expected), ""]
    assert errors == []
    page.close()


def test_at_2x_zoom_after_a_pan_the_stroke_lands_under_the_pointer(label_server, browser):
    url, root, names = label_server
    page, errors = _open(browser, url, names[1])
    page.click("#zoom-1")
    page.keyboard.press("=")
    page.keyboard.press("=")
    assert page.text_content("#zoom-level") == "200 %"
    scroll = page.locator("#label-scroll").bounding_box()
    start = (scroll["x"] + 900, scroll["y"] + 200)
    page.keyboard.down(" ")  # Space + drag pans
    page.mouse.move(*start)
    page.mouse.down()
    for step in range(1, 6):
        page.mouse.move(start[0] - 100 * step, start[1])
    page.mouse.up()
    page.keyboard.up(" ")
    assert page.evaluate("document.getElementById('label-scroll').scrollLeft") == 500
    box = page.locator("#mask-layer").bounding_box()
    assert box["width"] == 2 * WIDTH and box["x"] < scroll["x"]
    page.keyboard.press("3")
    # client positions inside the visible part; their image pixels, as the pointer sees them
    client = [(scroll["x"] + 200 + 60 * i, scroll["y"] + 150 + 10 * i) for i in range(8)]
    image = [((x - box["x"]) / 2, (y - box["y"]) / 2) for x, y in client]
    page.mouse.move(*client[0])
    page.mouse.down()
    for point in client[1:]:
        page.mouse.move(*point)
    page.mouse.up()
    _saved(page, 1)
    expected = stroke_pixels(image)
    assert image[0][0] > 250  # the pan moved the frame: these pixels are right of the first 250
    assert _db_masks(root, names[1]) == ["", "", severstal_rle(expected), ""]
    assert errors == []
    page.close()


def test_a_second_tab_gets_the_conflict_and_the_first_save_is_kept(label_server, browser):
    url, root, names = label_server
    first, _ = _open(browser, url, names[2])
    second, errors = _open(browser, url, names[2])
    for page in (first, second):
        page.click("#zoom-1")
    box = first.locator("#mask-layer").bounding_box()
    first.keyboard.press("3")
    _drag(first, box, [(100.0, 50.0), (200.0, 50.0)])
    _saved(first, 1)
    kept = _db_masks(root, names[2])
    assert kept[2]
    second.keyboard.press("1")
    _drag(second, box, [(900.0, 150.0), (950.0, 150.0)])
    second.wait_for_selector('#save-state[data-state="conflict"]')
    assert second.is_visible("#conflict") and "saved elsewhere" in second.text_content("#conflict")
    assert _db_masks(root, names[2]) == kept
    second.click("#conflict-load")
    second.wait_for_selector('#save-state[data-state="idle"][data-version="1"]')
    on_page = second.evaluate("Array.from(window.labelPage.editor.masks[2]).reduce((a, b) => a + b, 0)")
    assert on_page == rle_to_mask(kept[2]).sum()
    assert errors == []
    first.close()
    second.close()


def test_the_pages_rle_module_agrees_with_the_python_encoder(label_server, browser):
    url, _, names = label_server
    page, _ = _open(browser, url, names[3])
    rng = np.random.default_rng(4)
    mask = (rng.random((HEIGHT, WIDTH)) < 0.3).astype(np.uint8)
    mask[:, -1] = 1  # a run that ends on the last pixel
    encoded = page.evaluate(
        """async ([flat, width, height]) => {
            const rle = await import('/static/rle.js');
            const mask = Uint8Array.from(flat);
            const text = rle.encodeRle(mask, width, height);
            const back = rle.decodeRle(text, width, height);
            return [text, back.every((v, i) => v === mask[i])];
        }""",
        [mask.ravel().tolist(), WIDTH, HEIGHT],
    )
    assert encoded[0] == mask_to_rle(mask) and encoded[1]
    page.close()


def test_polygons_and_exclusive_strokes_in_the_editor_module(label_server, browser):
    """The editor's polygon covers the pixels whose centre it contains (checked with matplotlib's
    even-odd test), and an exclusive stroke clears the other classes under it; undo restores both."""
    from matplotlib.path import Path as Polygon

    url, _, names = label_server
    page, _ = _open(browser, url, names[3])
    # no pixel centre lies exactly on an edge here: the test does not depend on how ties go
    corners = [(100.37, 20.11), (400.29, 60.23), (380.41, 200.17), (250.13, 120.31), (120.23, 230.07)]
    result = page.evaluate(
        """async (corners) => {
            const { MaskEditor } = await import('/static/editor.js');
            const editor = new MaskEditor(1600, 256, 4, () => {});
            editor.classIndex = 2;
            editor.polygon(corners, false);
            const polygon = Array.from(editor.masks[2]);
            editor.classIndex = 0;
            editor.exclusive = true;
            editor.radius = 10;
            editor.begin(false); editor.to(200, 100); editor.to(300, 100); editor.end();
            const after = [Array.from(editor.masks[0]), Array.from(editor.masks[2])];
            editor.undo();
            return { polygon, after, undone: Array.from(editor.masks[2]) };
        }""",
        corners,
    )
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    centres = np.column_stack([xs.ravel() + 0.5, ys.ravel() + 0.5])
    inside = Polygon(corners).contains_points(centres).reshape(HEIGHT, WIDTH)
    polygon = np.array(result["polygon"], bool).reshape(HEIGHT, WIDTH)
    assert polygon.sum() > 20_000 and np.array_equal(polygon, inside)
    brush = stroke_pixels([(200.0, 100.0), (200.0, 100.0), (300.0, 100.0)], radius=10)
    class1, class3 = (np.array(m, bool).reshape(HEIGHT, WIDTH) for m in result["after"])
    assert np.array_equal(class1, brush)
    assert np.array_equal(class3, inside & ~brush) and (inside & brush).any()
    assert np.array_equal(np.array(result["undone"], bool).reshape(HEIGHT, WIDTH), inside)
    page.close()


@pytest.mark.parametrize("fault", ["network drop", "database locked"])
def test_a_failed_save_keeps_the_page_on_the_frame_with_its_stroke_until_a_save_gets_through(
    fault, tmp_path, browser
):
    """Leaving a frame whose last save failed saves again first; while that fails the page stays,
    with the stroke on screen and the error shown, and closing the tab asks. Once the fault is gone
    the next → saves the stroke and moves on."""
    from playwright.sync_api import Error as PlaywrightError

    names = _frames(tmp_path / "frames", 2, seed=5)
    db_path = tmp_path / "labels.sqlite"
    wait = ["--busy-timeout", "1"] if fault == "database locked" else []  # each save waits 1 s, not 5
    with running_label_server(tmp_path / "frames", db_path, *wait) as (url, _):
        page, errors = _open(browser, url, names[0])
        page.click("#zoom-1")
        box = page.locator("#mask-layer").bounding_box()
        page.keyboard.press("3")
        first = [(100.0, 60.0), (300.0, 60.0)]
        _drag(page, box, first)
        _saved(page, 1)

        holder, dropped = None, []

        def drop(route):
            if route.request.method != "PUT":
                return route.continue_()
            dropped.append(route.request.url)
            return route.abort("internetdisconnected")

        if fault == "network drop":
            page.route(f"**/api/label/frames/{names[0]}", drop)
        else:  # another process holds the write lock past the server's busy timeout
            holder = sqlite3.connect(db_path, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
        second = [(100.0, 160.0), (300.0, 160.0)]
        _drag(page, box, second)
        page.wait_for_selector('#save-state[data-state="error"]', timeout=30_000)
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "name => document.getElementById('page-error').dataset.kind === 'kept'"
            " || document.getElementById('frame-name').textContent !== name",
            arg=names[0],
            timeout=30_000,
        )
        assert page.text_content("#frame-name") == names[0]
        assert "not saved" in page.text_content("#page-error")
        assert "stays on this frame" in page.text_content("#page-error")
        assert page.get_attribute("#save-state", "data-state") == "error"
        both = stroke_pixels(first) | stroke_pixels(second)
        on_page = page.evaluate("Array.from(window.labelPage.editor.masks[2])")
        assert np.array_equal(np.array(on_page, bool).reshape(HEIGHT, WIDTH), both)
        assert _db_masks(tmp_path, names[0]) == ["", "", severstal_rle(stroke_pixels(first)), ""]
        if fault == "network drop":
            assert len(dropped) == 2  # the stroke's save and the one → tried before staying
        else:  # the server's detail, with the wait that --busy-timeout set
            assert "is locked by another process (waited 1 s)" in page.text_content("#page-error")

        if SCREENSHOT_DIR:
            _screenshot(page, f"label_not_saved_{fault.replace(' ', '_')}.png")
        asked: list[str] = []
        page.once("dialog", lambda dialog: (asked.append(dialog.type), dialog.dismiss()))  # "stay"
        with pytest.raises(PlaywrightError, match="ERR_ABORTED"):
            page.goto(f"{url}/?frame={names[1]}")  # leaving the page by its address
        assert asked == ["beforeunload"] and page.text_content("#frame-name") == names[0]

        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()
        else:
            page.unroute(f"**/api/label/frames/{names[0]}")
        page.keyboard.press("ArrowRight")
        page.wait_for_selector(f'#frame-name:text-is("{names[1]}")')
        assert _db_masks(tmp_path, names[0]) == ["", "", severstal_rle(both), ""]
        assert page.is_hidden("#page-error")
        assert errors == []
        page.close()


def test_a_frame_the_model_found_nothing_on_says_so_instead_of_pre_labelled(tmp_path, browser):
    names = _frames(tmp_path / "frames", 2, seed=6)
    db_path = tmp_path / "labels.sqlite"
    with running_label_server(tmp_path / "frames", db_path) as (url, _):
        with LabelStore.open(db_path) as store:  # the proposals a model run leaves
            store.set_proposal(names[0], ["", "", "", ""], "m:1")
            store.set_proposal(names[1], ["", "", "1001 40", ""], "m:1")
        page, errors = _open(browser, url, names[0])
        assert page.text_content("#frame-status") == "model proposes nothing"
        assert page.get_attribute("#frame-status", "data-status") == "nothing-proposed"
        assert "checked by m:1" in page.text_content("#frame-meta")
        if SCREENSHOT_DIR:
            _screenshot(page, "label_nothing_proposed.png")
        page.click("#zoom-1")
        box = page.locator("#mask-layer").bounding_box()
        _drag(page, box, [(100.0, 60.0), (200.0, 60.0)])
        _saved(page, 1)
        assert page.text_content("#frame-status") == "in progress"  # the labeller's mask now
        page.close()
        page, errors = _open(browser, url, names[1])
        assert page.text_content("#frame-status") == "pre-labelled"
        assert "pre-labelled by m:1" in page.text_content("#frame-meta")
        assert errors == []
        page.close()


def test_the_queue_counter_counts_down_on_confirm_and_skip(tmp_path, browser):
    names = _frames(tmp_path / "frames", 4, seed=7)
    db_path = tmp_path / "labels.sqlite"
    with running_label_server(tmp_path / "frames", db_path) as (url, _):
        with LabelStore.open(db_path) as store:
            store.set_queue([(names[2], 0.9, {}), (names[0], 0.5, {}), (names[1], 0.3, {})], "m:1")
            store.save_masks(names[1], ["", "", "", ""], version=0, status="skipped")
        page, errors = _open(browser, url, names[2])
        counter = "#stats-line"
        # 3 queued, names[1] skipped already: 2 left; names[3] is not in the queue
        page.wait_for_selector(f'{counter}:has-text("2 of 3 left in the queue")')
        page.keyboard.press("Enter")  # confirm names[2]
        page.wait_for_selector(f'#frame-name:text-is("{names[0]}")')
        page.wait_for_selector(f'{counter}:has-text("1 of 3 left in the queue")')
        if SCREENSHOT_DIR:
            _screenshot(page, "label_queue_left.png")
        page.keyboard.press("s")  # skip names[0]: the queue is done, the unqueued frame is next
        page.wait_for_selector(f'#frame-name:text-is("{names[3]}")')
        page.wait_for_selector(f'{counter}:has-text("0 of 3 left in the queue")')
        with LabelStore.open(db_path, readonly=True) as store:
            assert store.stats().queue["left"] == 0
        assert errors == []
        page.close()
