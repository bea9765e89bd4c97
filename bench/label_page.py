"""What the labelling page costs: a stroke's pointer events, a save, the queue at Kaggle scale.

Run: ``.venv/bin/python bench/label_page.py [--events 200]`` (Chromium at /usr/bin/chromium,
or ``STEEL_DEFECT_CHROMIUM``). One run, side by side:

* per pointer event of a brush stroke, on a 1600x256 frame with all four classes painted, the
  page's own time (``performance.now()`` around stamping the brush and repainting), median and
  95th percentile: repainting only the rectangle the event touched, as the page does, beside
  repainting the whole frame on every event; both beside the 16.7 ms of one 60 Hz frame;
* a save's round trip from the page (encode four RLEs, PUT, one SQLite transaction, answer)
  beside a bare ``GET /api/health`` round trip;
* ``next_in_queue`` with 12,568 frames in the database, at the start and with the first 12,000
  of the queue already confirmed, beside a primary-key lookup of one frame.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' helpers: a free port, waiting for the server

from steel_defect.data.rle import mask_to_rle  # noqa: E402
from steel_defect.data.synth import generate_frame  # noqa: E402
from steel_defect.labels.store import LabelStore  # noqa: E402

CHROMIUM = os.environ.get("STEEL_DEFECT_CHROMIUM", "/usr/bin/chromium")
FRAME_BUDGET_MS = 1000 / 60


def _percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def painted_masks(rng) -> list[str]:
    """Four large overlapping masks: every class painted over a good part of the frame."""
    masks = []
    for class_index in range(4):
        mask = np.zeros((256, 1600), np.uint8)
        for _ in range(12):
            x, y = rng.integers(0, 1600), rng.integers(0, 256)
            cv2.ellipse(
                mask,
                (int(x), int(y)),
                (int(rng.integers(40, 200)), int(rng.integers(10, 60))),
                0,
                0,
                360,
                1,
                -1,
            )
        mask[:, class_index * 400 : class_index * 400 + 300] |= 1
        masks.append(mask_to_rle(mask))
    return masks


def stroke(page, events: int, zoom_box: dict) -> None:
    page.mouse.move(zoom_box["x"] + 50, zoom_box["y"] + 40)
    page.mouse.down()
    for i in range(events):
        t = i / events
        page.mouse.move(
            zoom_box["x"] + 50 + t * (zoom_box["width"] - 100),
            zoom_box["y"] + 40 + (zoom_box["height"] - 80) * abs(np.sin(6 * t)),
        )
    page.mouse.up()


def page_costs(events: int) -> None:
    from playwright.sync_api import sync_playwright
    from tests.test_labels import running_label_server

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "frames").mkdir()
        rng = np.random.default_rng(0)
        image, _ = generate_frame(rng)
        cv2.imwrite(str(tmp / "frames" / "frame.jpg"), image)
        with LabelStore.open(tmp / "labels.sqlite") as store:
            store.add_frames([("frame.jpg", 1600, 256)])
            store.save_masks("frame.jpg", painted_masks(rng), version=0, status="pre-labelled")
        with running_label_server(tmp / "frames", tmp / "labels.sqlite") as (url, _):
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
                )
                page = browser.new_page(viewport={"width": 1800, "height": 1000})
                page.goto(f"{url}/?frame=frame.jpg")
                page.wait_for_selector('#label-stage[data-ready="1"]')
                page.click("#zoom-1")
                page.keyboard.press("3")
                box = page.locator("#mask-layer").bounding_box()
                rows = []
                for mode in ("dirty rectangle (the page)", "whole frame per event"):
                    if mode.startswith("whole"):
                        page.evaluate("labelPage.editor.onChange = () => labelPageDebug.repaintAll()")
                    page.evaluate("labelPage.eventTimes = []")
                    stroke(page, events, box)
                    page.wait_for_selector('#save-state[data-state="saved"]')
                    times = page.evaluate("labelPage.eventTimes")
                    rows.append((mode, *_percentiles(times), len(times)))
                page.evaluate("labelPage.editor.onChange = labelPageDebug.repaint; labelPage.saveTimes = []")
                for i in range(20):  # short strokes, painted then erased, each saved before the next
                    page.keyboard.press("b" if i % 2 == 0 else "e")
                    version = int(page.get_attribute("#save-state", "data-version"))
                    x = box["x"] + 100 + 60 * (i // 2)
                    page.mouse.move(x, box["y"] + 100)
                    page.mouse.down()
                    page.mouse.move(x + 30, box["y"] + 120)
                    page.mouse.up()
                    page.wait_for_selector(f'#save-state[data-state="saved"][data-version="{version + 1}"]')
                saves = page.evaluate("labelPage.saveTimes")
                browser.close()
            health = []
            with httpx.Client(base_url=url) as client:
                for _ in range(50):
                    start = time.perf_counter()
                    client.get("/api/health").raise_for_status()
                    health.append(1000 * (time.perf_counter() - start))
    print(f"pointer events of a brush stroke, 1600x256, four classes painted ({events} events a stroke):")
    print(f"  {'repaint':30} {'median ms':>10} {'p95 ms':>8} {'p95 / 60 Hz frame':>18}")
    for mode, median, p95, n in rows:
        print(f"  {mode:30} {median:10.2f} {p95:8.2f} {p95 / FRAME_BUDGET_MS:18.2f}   ({n} events)")
    print(
        f"  whole frame / dirty rectangle: {rows[1][1] / rows[0][1]:.1f}x the median, "
        f"{rows[1][2] / rows[0][2]:.1f}x the p95"
    )
    save_median, save_p95 = _percentiles(saves)
    health_median, _ = _percentiles(health)
    print(
        f"save round trip (encode 4 RLEs, PUT, transaction): median {save_median:.1f} ms, "
        f"p95 {save_p95:.1f} ms over {len(saves)} saves; {save_median / health_median:.1f}x a bare "
        f"GET /api/health ({health_median:.2f} ms)"
    )


def queue_costs(frames: int = 12_568, calls: int = 200) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        with LabelStore.open(Path(tmp) / "labels.sqlite") as store:
            names = [f"{i:08x}.jpg" for i in range(frames)]
            store.add_frames([(n, 1600, 256) for n in names])
            order = np.random.default_rng(0).permutation(frames)
            store.set_queue([(names[i], float(frames - r), {}) for r, i in enumerate(order)], "bench:1")

            def timed(fn) -> float:
                samples = []
                for _ in range(calls):
                    start = time.perf_counter()
                    fn()
                    samples.append(1e6 * (time.perf_counter() - start))
                return statistics.median(samples)

            lookup = timed(lambda: store.frame(names[123]))
            fresh = timed(lambda: store.next_in_queue(names[order[10]]))
            done = [names[i] for i in order[:12_000]]
            store.import_labels([(n, 1600, 256, ["", "", "", ""]) for n in done], source="bench")
            late = timed(lambda: store.next_in_queue(None))
    print(f"queue with {frames:,} frames (median of {calls} calls):")
    print(f"  frame lookup (primary key, masks, proposal)     {lookup:8.0f} us")
    print(
        f"  next_in_queue at the start                      {fresh:8.0f} us  "
        f"({fresh / lookup:.1f}x the lookup)"
    )
    print(
        f"  next_in_queue, first 12,000 of the queue done   {late:8.0f} us  ({late / lookup:.1f}x the lookup)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    queue_costs()
    page_costs(args.events)
    return 0


if __name__ == "__main__":
    sys.exit(main())
