"""Full-resolution inference speed on this CPU: backends beside the FLOP floor, pipeline, memory.

Run: ``.venv/bin/python bench/inference.py [--n 4] [--batch 1] [--repeats 3] [--threads T]
[--checkpoints SEG.pth [CLS.pth]]``.
Without checkpoints it times an untrained full-size Unet-resnet18 (``configs/seg/
unet_resnet18_bcedice.yml``: 1600x256 in, 4 maps out; speed does not depend on the weights) on
synthetic 1600x256 JPEGs, half of them defect-free. One run prints one table; every time is the
fastest of ``--repeats`` interleaved runs, in seconds per frame:

* model only, on preloaded input, no TTA: torch eager (contiguous, what the predictor ran
  before the ONNX backend), torch channels-last, ONNX Runtime fp32 and ONNX Runtime int8
  (static QDQ, per-channel, calibrated on 4 other synthetic frames);
* the FLOP floor: the model's FLOPs counted by ``torch.utils.flop_counter`` on one frame,
  divided by this CPU's fp32 matrix-multiply peak measured in the same run (2048x2048
  ``torch.mm`` at the same thread count);
* the full pipeline (decode -> network -> post-processing -> RLE -> CSV) for torch eager
  (today's pipeline before this work), torch channels-last and ONNX fp32, and its ratio to the
  model-only time of the same backend;
* peak RSS of the fastest fp32 pipeline on N and 4N frames, each in a fresh process;
* hflip TTA run as one batched call beside one call per view (ONNX fp32);
* with a classifier among ``--checkpoints``: pipeline with and without classifier gating.

Targets (issue 11): fastest fp32 pipeline >= 1.4x today's torch pipeline; the fastest fp32 model
within 1.6x of the FLOP floor; pipeline / model >= 0.85; RSS 4N / N <= 1.1.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from benchdata import REPO, fastest, print_rows, synthetic_images
from torch.utils.flop_counter import FlopCounterMode

from steel_defect.config import load_config
from steel_defect.data.images import read_image
from steel_defect.inference.networks import default_threads
from steel_defect.inference.onnx_backend import load_onnx
from steel_defect.inference.onnx_export import export_onnx, quantize_int8
from steel_defect.inference.postprocess import ClassParams, PostProcessing
from steel_defect.inference.predictor import Predictor, network_input
from steel_defect.inference.run import predict_folder
from steel_defect.inference.torch_backend import load_torch
from steel_defect.models import build_model
from steel_defect.models.checkpoint import model_from_checkpoint, save_checkpoint

FULL_SIZE = "configs/seg/unet_resnet18_bcedice.yml"


def _child(args) -> None:
    """Run the pipeline once and print its peak RSS (a fresh process measures cleanly)."""
    predictor = Predictor(args.checkpoints, tta=(), backend=args.backend, threads=args.threads)
    predict_folder(predictor, args.images, Path(args.out), batch_size=args.batch, progress=False)
    print(json.dumps({"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _rss(checkpoint: str, backend: str, images: Path, out: Path, args) -> float:
    cmd = [sys.executable, __file__, "--child", "--backend", backend, "--images", str(images)]
    cmd += ["--out", str(out), "--batch", str(args.batch), "--threads", str(args.threads)]
    done = subprocess.run([*cmd, "--checkpoints", checkpoint], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["max_rss_mb"]


def _interleaved(fns: dict, repeats: int) -> dict:
    """The fastest of ``repeats`` runs of each function, the functions taking turns: a burst of
    other work on a shared machine then slows one run of each instead of all runs of one."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], fastest(fn, 1))
    return best


def matmul_peak(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """fp32 FLOP/s of a square ``torch.mm`` on ``threads`` threads (the fastest of ``repeats``)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    return 2 * size**3 / fastest(lambda: torch.mm(a, b), repeats)


def model_flops(checkpoint: str, shape: tuple[int, ...]) -> int:
    model, _ = model_from_checkpoint(checkpoint)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4, help="frames for N (the memory run also uses 4N)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the fastest is kept")
    parser.add_argument("--threads", type=int, default=default_threads(), help="default: physical cores")
    parser.add_argument(
        "--checkpoints", nargs="*", help="segmenter [classifier]; default untrained full size"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        small, large, calib = work / "n", work / "4n", work / "calib"
        paths = synthetic_images(small, args.n)
        synthetic_images(large, 4 * args.n)
        calib_frames = [read_image(p) for p in synthetic_images(calib, 4, seed=1)]
        if args.checkpoints:
            seg, *others = args.checkpoints
        else:
            torch.manual_seed(0)
            cfg = load_config(REPO / FULL_SIZE, ["model.encoder_weights=null"])
            seg, others = str(save_checkpoint(work / "seg.pth", build_model(cfg), cfg, 0, {})), []
        fp32 = str(export_onnx(seg, work / "seg.onnx"))
        int8 = str(quantize_int8(fp32, work / "seg.int8.onnx", calib_frames))
        networks = {
            "torch eager (contiguous)": load_torch(seg, threads=args.threads, channels_last=False),
            "torch channels-last": load_torch(seg, threads=args.threads),
            "ONNX Runtime fp32": load_onnx(fp32, args.threads, spin=True),
            "ONNX Runtime fp32, no spinning": load_onnx(fp32, args.threads, spin=False),
            "ONNX Runtime int8": load_onnx(int8, args.threads),
        }
        frames = [read_image(p) for p in paths]
        first = next(iter(networks.values()))
        batches = [network_input(first, frames[i : i + args.batch]) for i in range(0, args.n, args.batch)]
        for net in networks.values():
            net.run(batches[0])  # warm-up
        predictors = {}
        for name in (
            "torch eager (contiguous)",
            "torch channels-last",
            "ONNX Runtime fp32",
            "ONNX Runtime fp32, no spinning",
        ):
            predictor = Predictor([fp32 if "ONNX" in name else seg], tta=(), threads=args.threads)
            predictor.segmenters[0] = networks[name]
            predictors[name] = predictor

        def pipeline(predictor):
            predict_folder(predictor, small, work / "p.csv", batch_size=args.batch, progress=False)

        # Model-only and pipeline runs take turns in the same rounds, so their ratio is measured
        # side by side; on this shared machine two separate rounds a minute apart can differ
        # by 1.5x.
        runs = {
            ("model", name): (lambda net=net: [net.run(b) for b in batches]) for name, net in networks.items()
        }
        runs |= {("pipeline", name): (lambda p=p: pipeline(p)) for name, p in predictors.items()}
        timed = _interleaved(runs, args.repeats)
        model_s = {name: sec / args.n for (kind, name), sec in timed.items() if kind == "model"}
        pipe_s = {name: sec / args.n for (kind, name), sec in timed.items() if kind == "pipeline"}
        flops = model_flops(seg, batches[0].shape[1:])
        peak = matmul_peak(args.threads)
        floor = flops / peak
        fastest_fp32 = min(
            ("torch channels-last", "ONNX Runtime fp32", "ONNX Runtime fp32, no spinning"),
            key=lambda name: pipe_s[name],
        )
        backend = "onnx" if "ONNX" in fastest_fp32 else "torch"
        checkpoint = fp32 if backend == "onnx" else seg
        rss_n = _rss(checkpoint, backend, small, work / "b.csv", args)
        rss_4n = _rss(checkpoint, backend, large, work / "c.csv", args)
        tta = {
            (backend, batched): Predictor(
                [fp32 if backend == "onnx" else seg], tta=("hflip",), threads=args.threads, batch_tta=batched
            )
            for backend in ("torch", "onnx")
            for batched in (True, False)
        }
        chunks = [frames[i : i + args.batch] for i in range(0, args.n, args.batch)]
        runs = {batched: (lambda p=p: [p.segment(c) for c in chunks]) for batched, p in tta.items()}
        tta_s = {batched: sec / args.n for batched, sec in _interleaved(runs, args.repeats).items()}

        rows = [(f"model only, {name} (s/frame)", f"{sec:.3f}") for name, sec in model_s.items()]
        rows += [
            ("model FLOPs per frame (G, counted)", f"{flops / 1e9:.1f}"),
            ("fp32 matmul peak, torch.mm 2048 (GFLOP/s)", f"{peak / 1e9:.0f}"),
            ("FLOP floor (s/frame)", f"{floor:.3f}"),
            (
                "fastest fp32 model / floor (target <= 1.6)",
                f"{min(sec for n, sec in model_s.items() if 'int8' not in n) / floor:.2f}",
            ),
        ]
        rows += [(f"pipeline, {name} (s/frame)", f"{sec:.3f}") for name, sec in pipe_s.items()]
        today = pipe_s["torch eager (contiguous)"]
        rows += [
            (
                f"speed-up of {fastest_fp32} pipeline over torch eager (target >= 1.4)",
                f"{today / pipe_s[fastest_fp32]:.2f}",
            ),
            (
                f"{fastest_fp32}: model / pipeline time (target >= 0.85)",
                f"{model_s[fastest_fp32] / pipe_s[fastest_fp32]:.2f}",
            ),
            (f"peak RSS, {args.n} frames, {backend} (MB)", f"{rss_n:.0f}"),
            (f"peak RSS, {4 * args.n} frames, {backend} (MB)", f"{rss_4n:.0f}"),
            ("RSS 4N / N (target <= 1.1)", f"{rss_4n / rss_n:.3f}"),
            *(
                (
                    f"hflip TTA, {b}, {'views in one batch' if one else 'one call per view'} (s/frame)",
                    f"{sec:.3f}",
                )
                for (b, one), sec in tta_s.items()
            ),
        ]
        if others:
            rows += _gating_rows(seg, others, small, work, frames, args)
    print(f"{args.n} frames 1600x256, batch {args.batch}, {args.threads} threads, fastest of {args.repeats}")
    print_rows(rows)


def _gating_rows(seg, others, images, work, frames, args) -> list[tuple[str, str]]:
    """Pipeline frames/s with the classifier consulted, gate open vs closed on half the frames."""
    gated = Predictor([seg, *others], tta=(), threads=args.threads)
    scores = gated.classify(frames).max(axis=1)
    gate = float(np.median(scores)) + 1e-6
    gated.post = PostProcessing(tuple(ClassParams(cls_threshold=gate) for _ in range(4)))
    gated.can_skip = True
    ungated = Predictor([seg, *others], tta=(), threads=args.threads)
    rates = {}
    for name, predictor in (("no gate", ungated), ("gate", gated)):
        sec = fastest(
            lambda p=predictor: predict_folder(
                p, images, work / "g.csv", batch_size=args.batch, progress=False
            ),
            args.repeats,
        )
        rates[name] = args.n / sec
    return [
        ("pipeline with classifier, no gate (images/s)", f"{rates['no gate']:.2f}"),
        ("pipeline with classifier gate (images/s)", f"{rates['gate']:.2f}"),
        ("gated / ungated", f"{rates['gate'] / rates['no gate']:.2f}"),
    ]


if __name__ == "__main__":
    main()
