"""Render docs/gui.png: the web GUI with the model `make demo` trained, after a few example clicks.

Serves the app in this process on a free port, drives Debian's Chromium with Playwright
(no browser download) and saves a full-page screenshot. Run from the repository root
after ``make demo`` (it borrows the Chromium flags of the browser test, hence PYTHONPATH)::

    PYTHONPATH=. .venv/bin/python docs/make_gui_screenshot.py [--demo-dir work/demo] [--out docs/gui.png]
"""

from __future__ import annotations

import argparse

from playwright.sync_api import sync_playwright
from tests.test_webapp_e2e import CHROMIUM, CHROMIUM_ARGS

from steel_defect.inference.pipeline import build_predictor
from steel_defect.webapp.app import create_app
from steel_defect.webapp.server import demo_model, serve_in_thread
from steel_defect.webapp.service import InferenceService

EXAMPLES = ["example-5-c1c3.jpg", "example-2-c4.jpg", "example-6-clean.jpg", "example-4-c3c4.jpg"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", default="work/demo")
    parser.add_argument("--out", default="docs/gui.png")
    args = parser.parse_args()

    checkpoints, post = demo_model(args.demo_dir)
    predictor = build_predictor(post, checkpoints)  # the demo's tuned pipeline, as `serve` runs it
    server, url = serve_in_thread(create_app(InferenceService(predictor)))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.wait_for_selector('#model-line[data-state="ready"]')
        for n, name in enumerate(EXAMPLES, 1):
            page.click(f'button[data-example="{name}"]')
            page.wait_for_selector(f'#thumbs li[data-status="ready"] >> nth={n - 1}')
        page.click("#thumbs li >> nth=0")  # the first example: a scratch found by the model
        page.wait_for_selector('#viewer[data-state="ready"]')
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    server.should_exit = True
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
