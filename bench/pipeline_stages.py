"""Where a full-resolution frame's time goes, stage by stage, beside the forward pass.

Run: ``.venv/bin/python bench/pipeline_stages.py [--n 6] [--batch 2] [--tta hflip] [--repeats 5]``.
Same inputs as ``bench/inference.py`` (synthetic 1600x256 JPEGs; the demo's checkpoints or an
untrained full-resolution Unet-resnet18; ``--backend onnx`` times its ONNX export). Every
stage is timed ``--repeats`` times and the fastest run is kept (the least disturbed by other
work on the machine), in ms per frame:

* decode (``read_image``), the checkpoint's transforms (Normalize), the batch tensor;
* the forward pass (``Predictor._views``, TTA included) on preloaded input;
* ``Predictor.segment`` and ``predict_folder`` with the network replaced by a replay of its
  recorded output: everything but the forward pass (batch, sigmoid, TTA average, resize, copy
  to numpy, post-processing, RLE, CSV), timed without the forward pass's noise;
* post-processing and RLE on worst-case masks (each map thresholded at its median, so half
  of every map is foreground in ragged runs, and components under 100 pixels removed);
* ``predict_folder`` from JPEGs to CSV, and the ratio forward / pipeline, measured and
  estimated as forward / (forward + pipeline without the network), which a busy machine
  disturbs less.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from benchdata import bench_checkpoints, fastest, print_rows, synthetic_images

from steel_defect.data.images import read_image
from steel_defect.data.rle import mask_to_rle
from steel_defect.inference.postprocess import ClassParams, PostProcessing, postprocess
from steel_defect.inference.predictor import TTA_DIMS, Predictor, network_input
from steel_defect.inference.run import predict_folder


def _replay(run, inputs: list[np.ndarray]):
    """Stands in for a network's ``run``: a copy of the output it recorded for this input shape."""
    outputs = {x.shape: run(x) for x in inputs}

    def replay(x: np.ndarray):
        main, head = outputs[x.shape]
        return main.copy(), None if head is None else head.copy()  # fresh arrays, as the network's

    return replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=6, help="frames")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tta", nargs="*", default=[], help="flip views (default none)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoints", nargs="*", help="segmentation checkpoint")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = synthetic_images(work / "images", args.n)
        checkpoints = bench_checkpoints(work, args.checkpoints)[:1]
        predictor = Predictor(checkpoints, tta=tuple(args.tta), backend=args.backend)
        seg = predictor.segmenters[0]
        frames = [read_image(p) for p in paths]
        batches = [frames[i : i + args.batch] for i in range(0, args.n, args.batch)]
        tensors = [network_input(seg, b) for b in batches]
        predictor._views(seg, tensors[0])  # warm-up
        probs = np.concatenate([predictor.segment(b) for b in batches])
        post = PostProcessing(
            tuple(ClassParams(threshold=float(np.median(probs[:, c])), min_component=100) for c in range(4))
        )
        masks = [postprocess(p, post) for p in probs]

        def repeat(fn):
            return fastest(fn, args.repeats) / args.n * 1000  # ms per frame

        def pipeline():
            predict_folder(predictor, work / "images", work / "s.csv", batch_size=args.batch, progress=False)

        stages = {
            "decode JPEG": repeat(lambda: [read_image(p) for p in paths]),
            "transforms (Normalize)": repeat(lambda: [seg.transform(image=f)["image"] for f in frames]),
            "transforms + batch array": repeat(lambda: [network_input(seg, b) for b in batches]),
            "forward (model only)": repeat(lambda: [predictor._views(seg, t) for t in tensors]),
            "post-processing (worst case)": repeat(lambda: [postprocess(p, post) for p in probs]),
            "RLE, 4 masks (worst case)": repeat(lambda: [mask_to_rle(m) for ms in masks for m in ms]),
            "predict_folder, JPEG to CSV": repeat(pipeline),
        }
        views = [None, *(TTA_DIMS[v] for v in args.tta)]
        recorded = [np.concatenate([t if d is None else np.flip(t, d) for d in views]) for t in tensors]
        network, seg.run = seg.run, _replay(seg.run, [*tensors, *recorded])
        stages["segment without the network"] = repeat(lambda: [predictor.segment(b) for b in batches])
        stages["predict_folder without the network"] = repeat(pipeline)
        seg.run = network
    forward = stages["forward (model only)"]
    measured = forward / stages["predict_folder, JPEG to CSV"]
    estimated = forward / (forward + stages["predict_folder without the network"])
    rows = [(name, f"{ms:.1f}") for name, ms in stages.items()]
    rows.append(("forward / pipeline, measured (target >= 0.9)", f"{measured:.3f}"))
    rows.append(("forward / (forward + pipeline without network)", f"{estimated:.3f}"))
    tta = " ".join(args.tta) or "none"
    head = f"{args.n} frames 1600x256, batch {args.batch}, TTA {tta}, {args.backend} backend"
    print(f"{head}; ms per frame, fastest of {args.repeats}")
    print_rows(rows)


if __name__ == "__main__":
    main()
