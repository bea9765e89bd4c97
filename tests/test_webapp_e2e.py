"""The web GUI in a real browser: Debian's Chromium driven by Playwright against `steel-defect serve`.

Skips when Playwright or Chromium is missing (a laptop without them); ``make test`` and CI
install both and set ``STEEL_DEFECT_E2E=required``, which turns the skip into a failure.
Playwright never downloads a browser here: it launches the system one at ``CHROMIUM``.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import torch

from steel_defect.data.rle import rle_to_mask
from steel_defect.data.submission import read_submission
from steel_defect.data.synth import generate_frame
from steel_defect.inference.onnx_export import load_exported
from tests.conftest import random_checkpoints

pytestmark = pytest.mark.e2e
CHROMIUM = os.environ.get("STEEL_DEFECT_CHROMIUM", "/usr/bin/chromium")
# Without the networking flags Chromium keeps calling Google's hosts, which this sandbox refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_DIR = os.environ.get("STEEL_DEFECT_SCREENSHOTS")  # keep the screenshot (CI artifacts)
# Real Severstal test frames beside the checkout (never copied into the repository).
REAL_FRAMES = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "severstal_unlabeled" / "test_images"
)


def _browser_or_skip():
    problems = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problems.append("the Python package playwright is not installed (pip install -e .[web,dev])")
        sync_playwright = None
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        problems.append(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set STEEL_DEFECT_CHROMIUM)")
    if problems:
        message = "; ".join(problems)
        if os.environ.get("STEEL_DEFECT_E2E") == "required":
            pytest.fail(f"browser test required but {message}")
        pytest.skip(message)
    return sync_playwright


@contextmanager
def _serve(root: Path, *args: str, env: dict | None = None):
    """`steel-defect serve ARGS` in a subprocess on a free port; yields its URL once it answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(root / "serve.log", "w")  # closed after the server stops
    command = [
        sys.executable,
        "-m",
        "steel_defect.cli",
        "serve",
        "--port",
        str(port),
        "--demo-dir",
        str(root),
    ]
    process = subprocess.Popen([*command, *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            pytest.fail(f"serve exited with {process.returncode}:\n{(root / 'serve.log').read_text()}")
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"serve did not answer in 120 s:\n{(root / 'serve.log').read_text()}")
        time.sleep(0.3)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(20)
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`steel-defect serve` with an untrained model."""
    root = tmp_path_factory.mktemp("e2e")
    paths = random_checkpoints(root, exported=True)
    with _serve(root, "--untuned", "--checkpoints", str(paths["seg"]), str(paths["cls"])) as url:
        yield url


def _frame_file(path: Path, seed: int) -> Path:
    image, _ = generate_frame(np.random.default_rng(seed), defect_free=False)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def _row_area(page, class_id: int) -> int:
    text = page.text_content(f'#classes tr[data-class="{class_id}"] td.area')
    return int(text.replace(",", "").replace("px", "").strip())


def _union(classes: list[dict], ids) -> int:
    return int(_union_mask(classes, ids).sum())


def _union_mask(classes: list[dict], ids) -> np.ndarray:
    return np.logical_or.reduce([rle_to_mask(c["rle"]) for c in classes if c["class_id"] in ids])


def _overlay_pixels(page) -> np.ndarray:
    """Where the page's overlay canvas is painted: (H, W) bool, read back through a PNG."""
    url = page.evaluate("document.getElementById('overlay').toDataURL('image/png')")
    png = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    return cv2.imdecode(png, cv2.IMREAD_UNCHANGED)[:, :, 3] > 0


def test_upload_inspect_tune_and_download(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server)
    page.wait_for_selector('#model-line[data-state="ready"]')
    assert "unet · resnet18" in page.text_content("#model-line")

    # Upload a synthetic frame and a corrupt file through the file picker.
    good = _frame_file(tmp_path / "sheet_0042.jpg", seed=3)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good.read_bytes()[:5000])
    page.set_input_files("#file-input", [str(good), str(broken)])
    page.wait_for_selector('#thumbs li[data-status="ready"]')
    page.wait_for_selector('#thumbs li[data-status="error"]')
    page.wait_for_selector('#viewer[data-state="ready"]')
    assert page.text_content("#image-title") == "sheet_0042.jpg"

    # The overlay paints exactly the union of the masks the API returned; the table shows their areas.
    result = page.evaluate("state.items[0].result")
    classes = result["classes"]
    assert page.locator("#classes tbody tr").count() == 4
    for c in classes:
        assert _row_area(page, c["class_id"]) == c["area"]
    painted = int(page.get_attribute("#overlay", "data-painted"))
    assert painted == _union(classes, {1, 2, 3, 4}) > 0
    # pixel by pixel, not just the count: a row/column mix-up in the page's RLE decoder fails here
    assert np.array_equal(_overlay_pixels(page), _union_mask(classes, {1, 2, 3, 4}))
    assert page.evaluate("document.getElementById('frame').naturalWidth") == 1600

    # Toggle class 1 off: the overlay keeps only the other classes.
    page.uncheck('#classes input[type="checkbox"][data-class="1"]')
    assert int(page.get_attribute("#overlay", "data-painted")) == _union(classes, {2, 3, 4}) < painted
    page.check('#classes input[type="checkbox"][data-class="1"]')

    # Move class 1's threshold: masks come back from the stored maps and the table follows.
    before = _row_area(page, 1)
    page.locator('#classes input[type="range"][data-class="1"]').fill("0.6")
    page.wait_for_function(
        "area => document.querySelector('#classes tr[data-class=\"1\"] td.area').textContent"
        ".replace(/[^0-9]/g, '') !== String(area)",
        arg=before,
    )
    page.wait_for_selector('#viewer[data-state="ready"]')
    expected = httpx.post(
        f"{server}/api/results/{result['id']}/postprocess", json={"classes": {"1": {"threshold": 0.6}}}
    ).json()["classes"]
    assert _row_area(page, 1) == expected[0]["area"] < before
    assert page.text_content('#classes tr[data-class="1"] .tvalue') == "0.60"

    # The corrupt file failed alone, with its reason on the page.
    page.click('#thumbs li[data-status="error"]')
    assert "broken.jpg" in page.text_content("#image-error")
    page.click('#thumbs li[data-status="ready"]')

    # One click on an example adds it to the batch.
    page.click("#example-buttons button >> nth=0")
    page.wait_for_selector('#thumbs li[data-status="ready"] >> nth=1')
    assert "2 ready" in page.text_content("#batch-count") and "1 failed" in page.text_content("#batch-count")

    # The CSV holds both predicted images, with the thresholds on screen.
    with page.expect_download() as download:
        page.click("#download-csv")
    csv_path = tmp_path / "submission.csv"
    download.value.save_as(csv_path)
    example_name = page.evaluate("state.items[2].name")
    rows = read_submission(csv_path, expected_ids=["sheet_0042.jpg", example_name])
    assert rows["sheet_0042.jpg"] == [c["rle"] for c in expected]

    with page.expect_download() as download:
        page.click("#download-mask")
    assert download.value.suggested_filename == "sheet_0042_mask.png"

    shot = Path(SCREENSHOT_DIR or tmp_path) / "gui_e2e.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[1] == 1400 and image.std() > 10
    assert errors == [], errors
    page.close()


def test_drag_and_drop_adds_files(server, browser, tmp_path):
    page = browser.new_page()
    page.goto(server)
    page.wait_for_selector('#model-line[data-state="ready"]')
    data = list(_frame_file(tmp_path / "dropped.jpg", seed=5).read_bytes())
    page.evaluate(
        """bytes => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], "dropped.jpg", {type: "image/jpeg"}));
            const drop = new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true});
            document.getElementById("dropzone").dispatchEvent(drop);
        }""",
        data,
    )
    page.wait_for_selector('#thumbs li[data-status="ready"]')
    assert page.text_content("#image-title") == "dropped.jpg"
    page.close()


TOKEN = "e2e-token-0123456789"


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    """`steel-defect serve` that requires STEEL_DEFECT_TOKEN."""
    root = tmp_path_factory.mktemp("e2e_token")
    paths = random_checkpoints(root, exported=True)
    with _serve(
        root, "--untuned", "--checkpoints", str(paths["seg"]), env={**os.environ, "STEEL_DEFECT_TOKEN": TOKEN}
    ) as url:
        yield url


def test_the_page_asks_for_the_token_once_and_keeps_to_its_csp(token_server, browser, tmp_path):
    page = browser.new_page()
    prompts, errors = [], []
    page.on(
        "dialog", lambda d: (prompts.append(d.message), d.accept(TOKEN if prompts[1:] else "a-wrong-token"))
    )
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(token_server)
    page.wait_for_selector('#model-line[data-state="ready"]')
    page.set_input_files("#file-input", [str(_frame_file(tmp_path / "a.jpg", seed=2))])
    page.wait_for_selector('#viewer[data-state="ready"]')
    # the frame <img> loads with the session cookie, which no header could have carried
    page.wait_for_function("document.getElementById('frame').naturalWidth === 1600")
    # one question for the model, the examples and the upload together; the wrong answer asked again
    assert prompts == [
        "This server needs an access token (ask whoever started it):",
        "That token is wrong; try again:",
    ]
    # class swatches are coloured through CSSOM, which the CSP allows (a style attribute it would not)
    colour = page.evaluate("getComputedStyle(document.querySelector('#classes .swatch')).backgroundColor")
    assert colour not in ("", "rgba(0, 0, 0, 0)")
    assert errors == [], errors
    page.close()


@pytest.fixture(scope="module")
def real_frames_server(tmp_path_factory):
    """`steel-defect serve --examples REAL_FRAMES` with an untrained model recorded as synthetic-trained."""
    if not REAL_FRAMES.is_dir():
        pytest.skip(
            f"real Severstal frames not found at {REAL_FRAMES} (only present beside the team's checkout)"
        )
    root = tmp_path_factory.mktemp("e2e_real")
    paths = random_checkpoints(root, exported=True)
    state = torch.load(paths["seg"], map_location="cpu", weights_only=True)
    state["trained_on"] = {"source": "synthetic", "train_frames": 160, "valid_frames": 40, "fold": 0}
    torch.save(state, root / "seg_synth.pth")
    load_exported(
        root / "seg_synth.pth"
    )  # here, where torch is imported already: the server starts without it
    args = ["--untuned", "--checkpoints", str(root / "seg_synth.pth"), str(paths["cls"])]
    args += ["--examples", str(REAL_FRAMES)]
    with _serve(root, *args) as url:
        yield url


@pytest.mark.realdata
def test_real_example_frames_and_the_synthetic_model_warning(real_frames_server, browser):
    server = real_frames_server
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(server)
    page.wait_for_selector('#model-line[data-state="ready"]')

    # The served checkpoint says it learnt synthetic frames: the page warns, in an alert.
    info = httpx.get(f"{server}/api/model").json()
    assert info["checkpoints"][0]["trained_on"]["source"] == "synthetic"
    banner = page.locator("#model-warning")
    assert banner.is_visible() and banner.get_attribute("role") == "alert"
    assert "Demo model trained on synthetic frames only — not for real steel" in banner.text_content()
    assert page.text_content("#model-trained") == info["provenance"]["summary"]
    assert info["provenance"]["summary"].startswith("trained on 160 synthetic frames")

    # The example buttons are the folder's first frames by name, not the synthetic ones.
    names = httpx.get(f"{server}/api/examples").json()
    usable = sorted(p.name for p in REAL_FRAMES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    assert 0 < len(names) <= 12 and names == usable[: len(names)]
    buttons = page.locator("#example-buttons button")
    assert buttons.count() == len(names) and buttons.nth(0).get_attribute("data-example") == names[0]

    page.click("#example-buttons button >> nth=0")
    page.wait_for_selector('#viewer[data-state="ready"]')
    assert page.text_content("#image-title") == names[0]
    assert page.evaluate("document.getElementById('frame').naturalWidth") == 1600

    # The class table shows the API's answer for that frame.
    result = page.evaluate("state.items[0].result")
    answer = httpx.post(f"{server}/api/results/{result['id']}/postprocess", timeout=60).json()
    assert answer["file_name"] == names[0] and (answer["width"], answer["height"]) == (1600, 256)
    for c in answer["classes"]:
        row = f'#classes tr[data-class="{c["class_id"]}"]'
        assert _row_area(page, c["class_id"]) == c["area"]
        assert page.text_content(f"{row} .prob .num") == f"{c['probability']:.3f}"
        assert page.text_content(f"{row} td.regions") == str(c["components"])
    assert errors == [], errors
    page.close()


@pytest.fixture(scope="module")
def tuned_server(tmp_path_factory):
    """`steel-defect serve --postprocessing` of a pipeline whose search switched classes 2 and 4
    off: class 2 because the model had not learnt it (its out-of-fold signal), class 4 by margin."""
    from steel_defect.inference.pipeline import save_spec
    from steel_defect.inference.postprocess import NEVER, ClassParams, PostProcessing
    from steel_defect.inference.predictor import Predictor
    from steel_defect.models.checkpoint import update_checkpoint

    root = tmp_path_factory.mktemp("e2e_tuned")
    seg = random_checkpoints(root)["seg"]
    unlearnt = {"2": {"defect_images": 4, "peak_on_defects": 0.03, "lowest_threshold": 0.3}}
    update_checkpoint(seg, out_of_fold={"mean_dice": 0.8, "empty": 0.79, "images": 40, "unlearnt": unlearnt})
    off = ClassParams(0.5, 0, NEVER)
    post = PostProcessing((ClassParams(0.5), off, ClassParams(0.5), off))
    probe = Predictor([seg], tta=())
    spec = save_spec(root / "post.yml", post, probe.segmenters, (), "none", 1, root / "folds.csv", "x")
    with _serve(root, "--postprocessing", str(spec)) as url:
        yield url


def test_a_class_the_model_has_not_learnt_says_so_on_the_page(tuned_server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(tuned_server)
    page.wait_for_selector('#model-line[data-state="ready"]')
    page.click("#example-buttons button >> nth=0")
    page.wait_for_selector('#viewer[data-state="ready"]')
    badge = {c: page.locator(f'#classes tr[data-class="{c}"] .off') for c in (1, 2, 3, 4)}
    assert not badge[1].is_visible() and not badge[3].is_visible()
    assert badge[2].is_visible() and badge[4].is_visible()
    assert badge[2].text_content() == "off · not learnt yet" and badge[4].text_content() == "off"
    assert (
        badge[2]
        .get_attribute("title")
        .startswith(
            "not learnt yet: on its 4 out-of-fold frames with this class the model never reached 0.30 "
            "(highest 0.03). It needs more labelled frames"
        )
    )
    assert badge[4].get_attribute("title").startswith("min area is larger than a frame")
    shot = Path(SCREENSHOT_DIR or tmp_path) / "gui_switched_off.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert errors == [], errors
    page.close()
