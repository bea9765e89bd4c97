"""Render docs/line.png: the line dashboard on a synthetic inspection log (never real frames).

The log holds an hour of synthetic verdicts at one frame a second (``bulk_fill``, the search
bench's generator), a burst of class 4 in the last ten minutes that raises an alarm, and the
latest twelve frames as synthetic images with their synthetic masks, so the viewer shows a
frame with its overlay. Nothing here is a model's output. Run from the repository root::

    PYTHONPATH=. .venv/bin/python docs/make_line_screenshot.py [--out docs/line.png]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from playwright.sync_api import sync_playwright
from tests.test_line_e2e import _classes, wait_until
from tests.test_webapp_e2e import CHROMIUM, CHROMIUM_ARGS

from steel_defect.data.synth import generate_frame
from steel_defect.line.alarms import AlarmMonitor
from steel_defect.line.log import FrameRecord, InspectionLog, bulk_fill
from steel_defect.webapp.dashboard import create_dashboard_app
from steel_defect.webapp.server import serve_in_thread


def synthetic_log(root: Path) -> InspectionLog:
    log = InspectionLog.open(root / "inspection.sqlite")
    now = time.time()
    bulk_fill(log, 3000, now - 3600, rate_hz=1.0, seed=3)
    rng = np.random.default_rng(11)
    records = []
    for i in range(600):  # the last ten minutes: class 4 on about a third of the frames
        at = now - 600 + i
        name = f"coil17_{i:05d}.jpg"
        if i >= 588:  # the twelve newest are real files, drawn with their masks
            image, masks = generate_frame(rng, defect_free=False if i % 3 else None)
            if i % 3 == 0:
                masks[3, 60:200, 200 + 10 * (i % 7) : 520 + 10 * (i % 7)] = 1
            path = root / name
            cv2.imwrite(str(path), image)
        else:
            masks = np.zeros((4, 256, 1600), np.uint8)
            if rng.random() < 0.33:
                masks[3, 40:180, 300:700] = 1
            if rng.random() < 0.1:
                masks[2, :, 800:806] = 1
            path = root / "gone" / name
        classes = _classes({c: masks[c - 1] for c in range(1, 5) if masks[c - 1].any()}, 0.93)
        records.append(
            FrameRecord(
                source="/line/coil17",
                line="line-1",
                name=name,
                size=150_000,
                mtime_ns=int(at * 1e9),
                path=str(path),
                status="judged",
                seen_at=at - 0.18,
                judged_at=at,
                model="unet:3f9a1c07b2",
                classes=classes,
            )
        )
    log.record(records)
    AlarmMonitor({4: 0.25}, window_s=300, min_frames=20).check(log, "line-1", now)
    log.heartbeat(
        "/line/coil17", line="line-1", host="line-pc", pid=4242, model="unet:3f9a1c07b2",
        started_at=now - 3700, state="running", message=None, backlog=0, judged=3600,
    )  # fmt: skip
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/line.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = synthetic_log(Path(tmp))
        server, url = serve_in_thread(create_dashboard_app(log))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1250}, device_scale_factor=1)
            page.goto(url + "/")
            wait_until(page, "() => window.dashboard && window.dashboard.refreshed >= 1")
            page.locator("#results tbody tr").nth(1).click()
            wait_until(page, "() => document.querySelector('#viewer-image').complete")
            page.screenshot(path=args.out, full_page=True)
            browser.close()
        server.should_exit = True
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
