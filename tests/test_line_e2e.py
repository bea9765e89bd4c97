"""The line's dashboard in a real browser: Chromium driven by Playwright against the dashboard app
on a real SQLite log. The page must show the counts the log holds, a search must list exactly
the frames the test expects, and the viewer must paint exactly the logged masks.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

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


# -- the figures: axes, the rate tile, a watcher falling behind ----------------------------------


def _afternoon() -> str:
    """A time zone where it is 16:xx now, so the last hour is afternoon on a 24-hour clock (a
    12-hour clock cut to HH:MM read 03:35 there)."""
    offset = (16 - datetime.now(UTC).hour) % 24
    offset = offset - 24 if offset > 14 else offset
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"  # Etc/GMT-5 is UTC+5


def _open(browser, log: InspectionLog):
    """The dashboard of ``log`` in Chromium, on the afternoon clock, after its first poll."""
    server, url = serve_in_thread(create_dashboard_app(log))
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, timezone_id=_afternoon())
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url + "/")
    wait_until(page, "() => window.dashboard && window.dashboard.refreshed >= 1")
    assert page.locator("#page-error").is_hidden() and errors == [], errors
    return server, context, page


def _axes(page) -> dict[str, list[str]]:
    """The chart's tick labels, told apart by where they are anchored: under the plot (time), left
    of it (frames), right of it (rate)."""
    selectors = {"time": "[text-anchor=middle]", "frames": "[text-anchor=end]", "rate": ":not([text-anchor])"}
    return {kind: page.locator(f"#chart text.axis{s}").all_text_contents() for kind, s in selectors.items()}


def _check_time_axis(labels: list[str]) -> None:
    assert len(labels) >= 5, labels  # every 10 minutes over the hour
    for label in labels:
        hours, minutes = label.split(":")
        assert len(hours) == len(minutes) == 2 and hours in {"15", "16"} and minutes.endswith("0"), labels
    assert labels == sorted(labels) and len(set(labels)) == len(labels), labels


def _frame(name: str, at: float, masks: dict) -> FrameRecord:
    return FrameRecord(
        source="/lines/line-1", line="line-1", name=name, size=1000, mtime_ns=int(at * 1e9),
        path=f"/lines/line-1/{name}", status="judged", seen_at=at - 0.2, judged_at=at, model="unet:test",
        classes=_classes(masks),
    )  # fmt: skip


def test_the_chart_has_24_hour_times_and_distinct_whole_frame_ticks(browser, tmp_path):
    empty = InspectionLog.open(tmp_path / "empty.sqlite")
    server, context, page = _open(browser, empty)
    axes = _axes(page)
    _check_time_axis(axes["time"])
    assert axes["frames"] == ["0", "1"]  # the old axis read 1, 1, 1, 0, 0
    assert axes["rate"] == ["0%", "2%", "4%", "6%"]  # up to 5% when nothing was found
    context.close()
    server.should_exit = True

    few = InspectionLog.open(tmp_path / "few.sqlite")
    minute = (time.time() // 60 - 3) * 60  # three frames in one minute, one in the next
    few.record(
        [_frame(f"f{i}.jpg", minute + 1 + i, {4: _box(0, 0, 10, 10)} if i < 2 else {}) for i in range(3)]
        + [_frame("f3.jpg", minute + 61, {})]
    )
    opened = time.time()
    server, context, page = _open(browser, few)
    polled = time.time()
    axes = _axes(page)
    _check_time_axis(axes["time"])
    assert axes["frames"] == ["0", "1", "2", "3"]  # the old axis read 3, 2, 2, 1, 0
    rates = [float(t.rstrip("%")) for t in axes["rate"]]
    assert rates == [0, 20, 40, 60, 80]  # class 4 on 2 of the minute's 3 frames: 67%
    # the rate tile: 4 frames since the first one, over the minutes since then, and it says so
    label = page.locator('.tile[data-label^="per minute"]').get_attribute("data-label")
    shown = float(label.removeprefix("per minute (last ").removesuffix(" min)"))
    value = float(page.locator('.tile[data-label^="per minute"] .tile-value').inner_text())
    first = minute + 1  # the time observed runs from the first frame to the poll
    assert (opened - first) / 60 - 0.05 <= shown <= (polled - first) / 60 + 0.05
    assert 4 * 60 / (polled - first) - 0.05 <= value <= 4 * 60 / (opened - first) + 0.05  # old: 4 / 5 min
    context.close()
    server.should_exit = True


def test_a_watcher_behind_the_line_turns_the_header_amber_with_its_lag(browser, tmp_path):
    log = InspectionLog.open(tmp_path / "inspection.sqlite")
    log.heartbeat(
        "/lines/line-1", line="line-1", host="test", pid=1, model="unet:test", started_at=time.time() - 60,
        state="running", message=None, backlog=9, judged=120, lag_s=4.3,
    )  # fmt: skip
    server, context, page = _open(browser, log)
    header = page.locator("header.bar")
    assert "behind" in header.get_attribute("class")
    assert header.evaluate("h => getComputedStyle(h).backgroundColor") == "rgb(242, 176, 30)"
    assert page.locator("#watchers .watcher.behind").inner_text() == (
        "line-1: running · backlog 9 frames, 4.3 s behind · 120 judged"
    )
    context.close()
    server.should_exit = True
