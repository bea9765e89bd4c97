"""Render docs/label.png: the labelling page in use on synthetic frames (never real ones).

Starts ``steel-defect label`` on the six synthetic example frames, with the demo model's
pre-labels when ``make demo`` has trained one (``--demo-dir``), and draws on the frame with
the page's own tools: a polygon around the large patch (class 4) and a brush stroke along the
scratch (class 3), placed from the synthetic truth. Run from the repository root::

    PYTHONPATH=. .venv/bin/python docs/make_label_screenshot.py [--demo-dir work/demo] [--out docs/label.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
from playwright.sync_api import sync_playwright
from tests.test_labels import running_label_server
from tests.test_webapp_e2e import CHROMIUM, CHROMIUM_ARGS

from steel_defect.data.synth import generate_frame
from steel_defect.webapp.examples import EXAMPLE_SEED, N_EXAMPLES

FRAME = "example-4-c3c4.jpg"


def example_truth() -> dict[str, np.ndarray]:
    """The synthetic masks of the example frames, drawn exactly as ``example_images`` draws them."""
    rng = np.random.default_rng(EXAMPLE_SEED)
    out = {}
    for index in range(1, N_EXAMPLES + 1):
        _, masks = generate_frame(rng, defect_free=index == N_EXAMPLES)
        drawn = "".join(f"c{c}" for c in range(1, 5) if masks[c - 1].any()) or "clean"
        out[f"example-{index}-{drawn}.jpg"] = masks
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", default="work/demo")
    parser.add_argument("--out", default="docs/label.png")
    args = parser.parse_args()
    from steel_defect.webapp.examples import example_images

    masks = example_truth()[FRAME]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "frames").mkdir()
        for name, data in example_images().items():
            (tmp / "frames" / name).write_bytes(data)
        extra = []
        summary = Path(args.demo_dir) / "summary.json"
        if summary.is_file() and json.loads(summary.read_text()).get("postprocessing"):
            extra = ["--postprocessing", json.loads(summary.read_text())["postprocessing"]]
        with running_label_server(tmp / "frames", tmp / "labels.sqlite", *extra) as (url, _):
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 760})
                page.goto(f"{url}/?frame={FRAME}")
                page.wait_for_selector('#label-stage[data-ready="1"]')
                box = page.locator("#mask-layer").bounding_box()
                scale = box["width"] / 1600

                def at(x, y):
                    return box["x"] + x * scale, box["y"] + y * scale

                # class 4: a polygon around the patch, corners from its outline
                contours, _ = cv2.findContours(masks[3], cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                outline = cv2.approxPolyDP(max(contours, key=cv2.contourArea), 6, True)[:, 0]
                page.keyboard.press("4")
                page.keyboard.press("p")
                for x, y in outline:
                    page.mouse.click(*at(float(x), float(y)))
                page.keyboard.press("Enter")
                page.wait_for_selector('#save-state[data-state="saved"]')
                # class 3: one brush stroke along the scratch
                _, parts, stats, _ = cv2.connectedComponentsWithStats(masks[2])
                largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
                ys, xs = np.nonzero(parts == largest)
                order = np.argsort(xs)
                path = [
                    (float(xs[order[i]]), float(ys[order[i]]))
                    for i in np.linspace(0, len(xs) - 1, 12).astype(int)
                ]
                page.keyboard.press("3")
                page.keyboard.press("b")
                page.keyboard.press("[")
                page.keyboard.press("[")
                page.mouse.move(*at(*path[0]))
                page.mouse.down()
                for point in path[1:]:
                    page.mouse.move(*at(*point))
                page.mouse.up()
                page.wait_for_selector('#save-state[data-state="saved"][data-version="2"]')
                page.mouse.move(*at(1200, 60))
                page.click("#keys summary")
                page.screenshot(path=args.out, full_page=True)
                browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
