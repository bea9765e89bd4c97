"""The line's dashboard in a real browser: Chromium driven by Playwright against the dashboard app
on a real SQLite log. The page must show the counts the log holds, a search must list exactly
the frames the test expects, and the viewer must paint exactly the logged masks.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from steel_defect.data.rle import mask_to_rle
from steel_defect.line.log import FrameRecord, InspectionLog
from steel_defect.webapp.dashboard import create_dashboard_app
from steel_defect.webapp.server import serve_in_thread

pytestmark = pytest.mark.e2e


def _classes(masks: dict[int, np.ndarray], probability: float = 0.9) -> list[dict]:
    out = []
    for class_id in (1, 2, 3, 4):
        mask = masks.get(class_id, np.zeros((256, 1600), np.uint8))
        out.append(
            {
                "class_id": class_id,
                "probability": probability if mask.any() else 0.05,
                "area": int(mask.sum()),
                "components": int(mask.any()),
                "boxes": [],
                "rle": mask_to_rle(mask),
            }
        )
    return out


def _box(x0, y0, x1, y1) -> np.ndarray:
    mask = np.zeros((256, 1600), np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def wait_until(page, script: str, timeout: float = 30.0) -> None:
    """Poll ``script`` in the page until it is truthy (the page's CSP forbids the string
    evaluation that Playwright's wait_for_function polls with)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(script):
        assert time.monotonic() < deadline, f"timed out waiting for {script}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    root = tmp_path_factory.mktemp("line")
    image = root / "frame_a.jpg"
    cv2.imwrite(str(image), np.full((256, 1600, 3), 120, np.uint8))
    log = InspectionLog.open(root / "inspection.sqlite")
    now = time.time()
    specs = [  # (name, seconds ago, masks, line, status)
        ("frame_a.jpg", 600, {4: _box(100, 20, 400, 120), 3: _box(900, 0, 905, 256)}, "line-1", "judged"),
        ("frame_b.jpg", 500, {4: _box(0, 0, 10, 10)}, "line-1", "judged"),
        ("frame_c.jpg", 400, {1: _box(50, 50, 70, 70)}, "line-2", "judged"),
        ("frame_d.jpg", 300, {}, "line-1", "judged"),
        ("frame_e.jpg", 200, {}, "line-2", "corrupt"),
        ("frame_f.jpg", 100, {4: _box(600, 100, 700, 200)}, "line-2", "judged"),
    ]
    log.record(
        [
            FrameRecord(
                source=f"/lines/{line}",
                line=line,
                name=name,
                size=1000,
                mtime_ns=i,
                path=str(image) if name == "frame_a.jpg" else f"/lines/{line}/{name}",
                status=status,
                seen_at=now - ago - 0.3,
                judged_at=now - ago,
                model="unet:test" if status == "judged" else None,
                reason=None if status == "judged" else "truncated JPEG (no end-of-image marker)",
                classes=_classes(masks) if status == "judged" else [],
            )
            for i, (name, ago, masks, line, status) in enumerate(specs)
        ]
    )
    server, url = serve_in_thread(create_dashboard_app(log))
    yield url, log, {name: masks for name, _, masks, _, _ in specs}
    server.should_exit = True


def test_the_dashboard_shows_the_logs_counts_and_a_search_lists_what_it_should(browser, dashboard):
    url, log, masks = dashboard
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    # JS errors count; a 404 for a thumbnail whose image the test never wrote does not
    page.on(
        "console",
        lambda m: (
            errors.append(m.text) if m.type == "error" and "Failed to load resource" not in m.text else None
        ),
    )
    page.goto(url + "/")
    wait_until(page, "() => window.dashboard && window.dashboard.refreshed >= 1")
    assert page.locator("#page-error").is_hidden(), errors
    tile = lambda label: page.locator(f'.tile[data-label^="{label}"] .tile-value').inner_text()  # noqa: E731
    summary = log.aggregates(start=time.time() - 3600)
    assert tile("frames judged") == str(summary["frames"]["judged"]) == "5"
    assert tile("corrupt / missing") == "1 / 0"
    assert tile("class 4") == f"{100 * summary['classes'][4]['rate']:.1f}%" == "60.0%"
    rows = page.locator("#results tbody tr .name").all_inner_texts()
    assert rows == ["frame_f.jpg", "frame_e.jpg", "frame_d.jpg", "frame_c.jpg", "frame_b.jpg", "frame_a.jpg"]
    assert page.locator("#chart polyline[data-class='4']").count() == 1
    strip = page.locator("#strip figure")
    assert strip.count() == 5  # the judged frames, newest first; frame_e is corrupt
    # only frame_a's image is on disk: the other four thumbnails say so once their 404 arrives
    wait_until(page, "() => document.querySelectorAll('#strip .thumb-gone').length === 4")
    wait_until(page, "() => document.querySelector('#strip img').complete")
    assert page.locator("#strip img").evaluate("img => img.naturalWidth") == 400

    page.check("#class-boxes input[value='4']")
    page.fill("#min-area", "500")
    page.click("#search button[type=submit]")
    wait_until(page, "() => document.querySelector('#result-note').textContent.includes('matching')")
    assert page.locator("#results tbody tr .name").all_inner_texts() == ["frame_f.jpg", "frame_a.jpg"]
    href = page.locator("#export-submission").get_attribute("href")
    assert "classes=4" in href and "min_area=500" in href and "format=submission" in href

    page.select_option("#line", "line-1")
    page.click("#search button[type=submit]")
    wait_until(page, "() => document.querySelectorAll('#results tbody tr').length === 1")
    assert page.locator("#results tbody tr .name").all_inner_texts() == ["frame_a.jpg"]

    page.locator("#results tbody tr").first.click()
    wait_until(
        page, "!document.querySelector('#viewer').hidden && document.querySelector('#viewer-image').complete"
    )
    painted = page.evaluate(
        """() => {
        const c = document.querySelector('#viewer-overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const out = [];
        for (let p = 0; p < d.length / 4; p++) if (d[4 * p + 3] > 0) out.push(p);
        return out;
    }"""
    )
    expected = np.flatnonzero(masks["frame_a.jpg"][4] | masks["frame_a.jpg"][3])  # row-major, as ImageData
    assert painted == expected.tolist()
    assert page.locator("#viewer-image").evaluate("img => img.naturalWidth") == 1600
    assert errors == []
    page.close()
