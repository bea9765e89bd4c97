"""Inference throughput and memory: model-only vs the full pipeline, flat memory, gating.

Run: ``.venv/bin/python bench/inference.py [--n 6] [--batch 2] [--tta [hflip]] [--repeats 3]
[--checkpoints SEG.pth CLS.pth]``.
Without checkpoints it uses the ones ``make demo`` trained (work/demo) when present, else
untrained full-resolution models (speed does not depend on the weights). All figures come
from the same synthetic images (half defect-free), same batch size and TTA; throughput is the
fastest of ``--repeats`` interleaved runs:

* model-only forward images/s (preloaded tensors, TTA included) vs the whole pipeline
  (decode -> classifier -> segmenter -> post-processing -> RLE -> CSV) images/s, and the ratio;
* peak resident memory of the pipeline on N and 4N images, each in a fresh process, and the ratio;
* pipeline images/s with and without classifier gating (the gate is set at the median
  classifier score, so about half the frames skip the segmenter).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from benchdata import bench_checkpoints, print_rows, synthetic_images

from steel_defect.inference.postprocess import ClassParams, PostProcessing
from steel_defect.inference.predictor import Predictor
from steel_defect.inference.run import predict_folder


def _child(args) -> None:
    """Run the pipeline once and print its peak RSS (a fresh process measures cleanly)."""
    predictor = Predictor(args.checkpoints, tta=("hflip",))
    predict_folder(predictor, args.images, Path(args.out), batch_size=args.batch, progress=False)
    print(json.dumps({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _rss(checkpoints, images: Path, out: Path, batch: int) -> float:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "--images",
        str(images),
        "--out",
        str(out),
        "--batch",
        str(batch),
        "--checkpoints",
        *checkpoints,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["max_rss_mb"]


def _rate(fn, n: int) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=6, help="images for N (the memory run also uses 4N)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--checkpoints", nargs="*")
    parser.add_argument("--tta", nargs="*", default=["hflip"], help="flip views; none: --tta with no value")
    parser.add_argument("--repeats", type=int, default=1, help="throughput runs; the fastest is kept")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        small, large = work / "n", work / "4n"
        synthetic_images(small, args.n)
        synthetic_images(large, 4 * args.n)
        checkpoints = bench_checkpoints(work, args.checkpoints)
        tta = " ".join(args.tta) or "none"
        print(f"checkpoints: {checkpoints}; batch {args.batch}; TTA {tta}; {args.n} images, half defect-free")
        plain = Predictor(checkpoints[:1], tta=tuple(args.tta))
        frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(small.iterdir())]
        seg = plain.segmenters[0]
        tensors = [plain._batch(seg, frames[i : i + args.batch]) for i in range(0, len(frames), args.batch)]
        plain._forward(seg, tensors[0])  # warm-up

        def model_only():
            for batch in tensors:
                plain._forward(seg, batch)

        # Fastest of --repeats interleaved runs: on a shared machine a burst of other work
        # otherwise lands on one side of the ratio only.
        def pipeline():
            predict_folder(plain, small, work / "a.csv", batch_size=args.batch, progress=False)

        model_rate = pipe_rate = 0.0
        for _ in range(args.repeats):
            model_rate = max(model_rate, _rate(model_only, len(frames)))
            pipe_rate = max(pipe_rate, _rate(pipeline, len(frames)))
        rss_n = _rss(checkpoints[:1], small, work / "b.csv", args.batch)
        rss_4n = _rss(checkpoints[:1], large, work / "c.csv", args.batch)
        rows = [
            ("model-only forward (images/s)", f"{model_rate:.2f}"),
            ("full pipeline, decode to CSV (images/s)", f"{pipe_rate:.2f}"),
            ("pipeline / model-only (target >= 0.9)", f"{pipe_rate / model_rate:.2f}"),
            (f"peak RSS, {args.n} images (MB)", f"{rss_n:.0f}"),
            (f"peak RSS, {4 * args.n} images (MB)", f"{rss_4n:.0f}"),
            ("RSS 4N / N (target <= 1.1)", f"{rss_4n / rss_n:.3f}"),
        ]
        if len(checkpoints) > 1:
            gated = Predictor(checkpoints, tta=("hflip",))
            scores = gated.classify(frames).max(axis=1)
            gate = float(np.median(scores)) + 1e-6
            gated.post = PostProcessing(tuple(ClassParams(cls_threshold=gate) for _ in range(4)))
            gated.can_skip = True
            ungated = Predictor(checkpoints, tta=("hflip",))
            rate_off = _rate(
                lambda: predict_folder(ungated, small, work / "d.csv", batch_size=args.batch, progress=False),
                len(frames),
            )
            rate_on = _rate(
                lambda: predict_folder(gated, small, work / "e.csv", batch_size=args.batch, progress=False),
                len(frames),
            )
            rows += [
                ("pipeline with classifier, no gate (images/s)", f"{rate_off:.2f}"),
                ("pipeline with classifier gate (images/s)", f"{rate_on:.2f}"),
                ("gated / ungated", f"{rate_on / rate_off:.2f}"),
            ]
        print_rows(rows)


if __name__ == "__main__":
    main()
