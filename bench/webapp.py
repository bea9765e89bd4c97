"""Web API cost beside the bare predictor, re-thresholding beside a network run, concurrency.

Run: ``.venv/bin/python bench/webapp.py [--n 8] [--checkpoints SEG.pth CLS.pth]`` (defaults as
in bench/inference.py: the demo's checkpoints when present). One run, the same synthetic frames,
batch 4, hflip TTA, a real uvicorn server on localhost:

* predictor images/s (classifier + segmenter on decoded frames, what the service runs) vs
  ``POST /api/predict`` images/s (upload, content checks, decode, network, uint8 maps, JPEG
  preview, RLE, boxes, JSON), 4 files a request, and the ratio;
* ``POST /api/results/{id}/postprocess`` (new thresholds, no network) ms vs predict ms per image;
* the same images sent as one-image requests by 4 client threads at once vs one after another:
  inference is serialised, so this shows the lock costs no throughput.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from benchdata import bench_checkpoints, print_rows, synthetic_images

from steel_defect.data.images import read_image
from steel_defect.inference.predictor import Predictor
from steel_defect.webapp.app import create_app
from steel_defect.webapp.server import serve_in_thread
from steel_defect.webapp.service import InferenceService

BATCH = 4


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="images (a multiple of 4)")
    parser.add_argument("--checkpoints", nargs="*")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic_images(Path(tmp) / "images", args.n)
        checkpoints = bench_checkpoints(Path(tmp), args.checkpoints)
        print(f"checkpoints: {checkpoints}; {args.n} images; {BATCH} a batch / request; TTA hflip")
        predictor = Predictor(checkpoints, tta=("hflip",))
        service = InferenceService(predictor, batch_size=BATCH)
        server, url = serve_in_thread(create_app(service))
        files = [(p.name, p.read_bytes()) for p in paths]
        client = httpx.Client(base_url=url, timeout=600)

        def post(chunk) -> list[dict]:
            response = client.post("/api/predict", files=[("files", f) for f in chunk])
            response.raise_for_status()
            return response.json()["images"]

        post(files[:1])  # warm-up: first forward pass, examples of lazy imports

        def bare():
            frames = [read_image(p) for p in paths]
            for i in range(0, len(frames), BATCH):
                predictor.classify(frames[i : i + BATCH])
                predictor.segment(frames[i : i + BATCH])

        bare_s = _timed(bare)
        entries: list[dict] = []
        api_s = _timed(
            lambda: [entries.extend(post(files[i : i + BATCH])) for i in range(0, len(files), BATCH)]
        )
        ids = [e["id"] for e in entries]
        body = {"classes": {str(c): {"threshold": 0.3} for c in range(1, 5)}}
        rethreshold_s = _timed(lambda: [client.post(f"/api/results/{i}/postprocess", json=body) for i in ids])

        one_by_one_s = _timed(lambda: [post([f]) for f in files])
        with ThreadPoolExecutor(4) as pool:
            together_s = _timed(lambda: list(pool.map(lambda f: post([f]), files)))
        server.should_exit = True

        n = len(paths)
        rows = [
            ("predictor, decoded frames (images/s)", f"{n / bare_s:.2f}"),
            ("POST /api/predict, 4 files a request (images/s)", f"{n / api_s:.2f}"),
            ("API / predictor (target >= 0.85)", f"{bare_s / api_s:.2f}"),
            ("predict, per image (ms)", f"{1000 * api_s / n:.0f}"),
            ("re-threshold all 4 classes, per image (ms)", f"{1000 * rethreshold_s / n:.0f}"),
            ("re-threshold / predict", f"{rethreshold_s / api_s:.3f}"),
            ("1-image requests, one after another (images/s)", f"{n / one_by_one_s:.2f}"),
            ("1-image requests, 4 threads at once (images/s)", f"{n / together_s:.2f}"),
            ("concurrent / sequential", f"{one_by_one_s / together_s:.2f}"),
        ]
        print_rows(rows)


if __name__ == "__main__":
    main()
