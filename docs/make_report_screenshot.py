"""Render docs/report.png: the error-analysis report that `make demo` wrote.

Opens ``work/demo/report.html`` in Debian's Chromium with Playwright (no browser download)
and saves the first ``--height`` pixels: the Dice table, then class ``--class`` (the other
classes are hidden; 3, scratches, is the one the demo model finds). Run from the repository
root after ``make demo`` (it borrows the browser test's Chromium flags)::

    PYTHONPATH=. .venv/bin/python docs/make_report_screenshot.py [--report work/demo/report.html]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright
from tests.test_webapp_e2e import CHROMIUM, CHROMIUM_ARGS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", default="work/demo/report.html")
    parser.add_argument("--out", default="docs/report.png")
    parser.add_argument("--height", type=int, default=1900, help="pixels of the page to keep")
    parser.add_argument("--class", dest="class_id", type=int, default=3, help="the class section shown")
    args = parser.parse_args()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": args.height})
        page.goto(Path(args.report).resolve().as_uri())
        page.add_style_tag(content=f"section[id^=class-]:not(#class-{args.class_id}) {{ display: none; }}")
        page.screenshot(path=args.out)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
