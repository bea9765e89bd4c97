"""Line rate: how many frames a second `watch` judges with each pipeline, how late, and how far its
model runs from the floor the CPU's own matmul peak sets.

Run: ``.venv/bin/python bench/line_rate.py [--frames 48] [--pipeline NAME=SOURCE[:BACKEND[:PRECISION]] ...]
[--gate spec|off|both] [--threads 2] [--isa-avx2]``

For each pipeline, in one run on the same frames and threads:

1. **watch frames/s**: ``--frames`` real frames (``../shared/data/severstal_unlabeled``, else
   synthetic ones) dropped into a folder at once, judged by a :class:`Watcher` (listing, decode,
   the pipeline, a log transaction per batch) from its first verdict to its last.
2. **latency**: frames renamed into the watched folder at a steady ``--rate`` (10 a second), each
   one's arrival (its rename) to its row's ``judged_at``, at p50 and p99. A pipeline slower than
   the rate falls behind and its latency grows with the run: the table says so.
3. **model vs floor**: the pipeline's model time per frame (``predictor.predict`` on a batch,
   after a warm-up) against its FLOP floor: the frame's multiply-adds (every network, every TTA
   view, counted by torch's ``FlopCounterMode`` on the networks' torch models) divided by the
   peak of the kernel it runs, measured in the same run with a 2048x2048 matmul (fp32 and bf16 in
   torch, int8 in ONNX Runtime's ``MatMulInteger``).

Pipelines (``--pipeline``, repeatable; default: ``ensemble``):

* ``ensemble``: the real recipe's tuned pipeline shape, untrained (speed does not depend on the
  weights): Unet over EfficientNet-Lite0 at 128x800, four folds, hflip TTA;
* ``NAME=WORK/postprocessing.yml``: a tuned pipeline, e.g. the distilled student's
  ``line_postprocessing``; ``NAME=SPEC.yml+export/student_last.onnx`` the same pipeline on exports
  of its models (``:int8`` then runs their ``export --int8`` twins); ``NAME=a.pth,b.pth`` runs
  checkpoints untuned, without TTA;
* ``:BACKEND[:PRECISION]`` after the source picks ``inference.backend`` and ``inference.precision``
  (default ``onnx``, ``fp32``).

``--gate``: ``spec`` (the default) runs each tuned pipeline with the clean-frame gate its spec
holds, if any (docs/inference.md, "Skipping clean frames"); ``off`` without it; ``both`` runs each
pipeline that has one twice, with the gate and then without (a row ``NAME (no gate)``), on the same
frames. The ``skipped`` column is the share of ``watch``'s frames that skipped the segmenters.
GFLOP/frame and the floor are the full pass's; with a gate the model time is per frame judged,
skipped frames included, so it can fall below that floor.

``--isa-avx2`` reruns the whole bench in a child with ``ONEDNN_MAX_CPU_ISA=AVX2`` and
``MKL_ENABLE_INSTRUCTIONS=AVX2``: what an AVX2-only CPU would do. The figures are ratios measured
side by side; absolute times depend on the machine, which the header names.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from benchdata import REPO, arrive, fastest, synthetic_images

from steel_defect.inference.backend_choice import cpu_name

REAL_FRAMES = REPO.parent / "shared" / "data" / "severstal_unlabeled" / "test_images"
MATMUL_N = 2048


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# -- the kernels' peaks ----------------------------------------------------------------------


def _best_of(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    return fastest(fn, repeats)


def matmul_peaks(threads: int) -> dict[str, float]:
    """GFLOP/s (2 n^3 per matmul) of fp32 and bf16 matmuls in torch, and int8 in ONNX Runtime."""
    import torch

    torch.set_num_threads(threads)
    n = MATMUL_N
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        peaks[name] = 2 * n**3 / _best_of(lambda a=a, b=b: torch.matmul(a, b)) / 1e9
    peaks["int8"] = _int8_peak(threads)
    return peaks


def _int8_peak(threads: int) -> float:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n = MATMUL_N
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
        "int8_matmul",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
            helper.make_tensor_value_info("b", TensorProto.INT8, [n, n]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        onnx._serialize(model) if hasattr(onnx, "_serialize") else model.SerializeToString(),
        options,
        providers=["CPUExecutionProvider"],
    )
    rng = np.random.default_rng(0)
    feeds = {
        "a": rng.integers(0, 255, (n, n), dtype=np.uint8),
        "b": rng.integers(-127, 127, (n, n), dtype=np.int8),
    }
    return 2 * n**3 / _best_of(lambda: session.run(None, feeds)) / 1e9


# -- pipelines --------------------------------------------------------------------------------


def ensemble_checkpoints(work: Path) -> list[str]:
    """Four untrained folds of the real recipe (Unet over EfficientNet-Lite0, 128x800)."""
    from steel_defect.config import load_config
    from steel_defect.models import build_model
    from steel_defect.models.checkpoint import save_checkpoint

    cfg = load_config(REPO / "configs/real/unet_effnet_lite0.yml", ["model.encoder_weights=null"])
    model = build_model(cfg)
    paths = []
    for fold in range(4):
        path = work / f"ensemble_fold{fold}.pth"
        save_checkpoint(path, model, cfg, epoch=0, metrics={})
        paths.append(str(path))
    return paths


def build(spec: str, work: Path, threads: int, gate: bool = True):
    """(name, predictor, backend, precision) of one ``--pipeline`` entry; ``gate``: the spec's
    clean-frame gate, where it has one."""
    from steel_defect.inference.pipeline import build_predictor

    name, _, rest = spec.partition("=")
    parts = (rest or name).split(":")
    source = parts[0]
    backend = parts[1] if len(parts) > 1 else "onnx"
    precision = parts[2] if len(parts) > 2 else "fp32"
    options = {"backend": backend, "threads": threads, "clean_gate": gate}
    if precision != "fp32":
        options["precision"] = precision  # backends that know precisions take it
    if source == "ensemble":
        predictor = build_predictor(None, ensemble_checkpoints(work), untuned=True, tta=("hflip",), **options)
    elif "+" in source:  # a tuned spec with exports of its models in their place (int8 twins beside)
        spec, models = source.split("+", 1)
        predictor = build_predictor(Path(spec), models.split(","), **options)
    elif source.endswith((".yml", ".yaml")):
        predictor = build_predictor(Path(source), None, **options)
    else:
        predictor = build_predictor(None, source.split(","), untuned=True, tta=(), **options)
    return name, predictor, backend, precision


def frame_gflop(predictor) -> float | None:
    """Multiply-adds x 2 of one frame through the pipeline, in GFLOP; None when a network has no
    torch model to count (an .onnx file given as it is)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from steel_defect.models.checkpoint import model_from_checkpoint

    views = 1 + len(predictor.tta)  # the frame itself and each TTA view
    total = 0.0
    for network in [*predictor.segmenters, *predictor.classifiers]:
        pth = Path(network.path).with_suffix(".pth")
        if not pth.is_file():
            return None
        model = model_from_checkpoint(pth)[0].eval()
        probe = np.asarray(network.transform(image=np.zeros((256, 1600, 3), np.uint8))["image"])
        shape = (network.channels, *probe.shape[:2]) if probe.shape[-1] == network.channels else probe.shape
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *shape))
        total += counter.get_total_flops() * views
    return total / 1e9


def model_seconds(predictor, frames: list[np.ndarray], batch: int) -> float:
    """Seconds per frame of ``predictor.predict`` on batches, the fastest of three passes."""
    predictor.predict(frames[:batch])  # warm-up: first-call allocations, a backend's compile
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for k in range(0, len(frames), batch):
            predictor.predict(frames[k : k + batch])
        best = min(best, (time.perf_counter() - start) / len(frames))
    return best


# -- watch ------------------------------------------------------------------------------------


def frames_folder(work: Path, count: int) -> Path:
    folder = work / "frames"
    folder.mkdir(exist_ok=True)
    real = sorted(REAL_FRAMES.glob("*.jpg"))[:count] if REAL_FRAMES.is_dir() else []
    if len(real) >= count:
        for path in real:
            shutil.copyfile(path, folder / path.name)
        return folder
    synthetic_images(folder, count, seed=1)
    return folder


def watch_rate(predictor, source: Path, work: Path, batch: int) -> float:
    """Frames per second of ``watch`` on every frame of ``source`` dropped at once, first verdict
    to last."""
    from steel_defect.line.log import InspectionLog, Search
    from steel_defect.line.watch import Watcher

    folder = work / f"drop{time.monotonic_ns()}"
    shutil.copytree(source, folder)
    log = InspectionLog.open(folder.with_suffix(".sqlite"))
    watcher = Watcher(
        folder, log, predictor, settle_s=0.0, batch_size=batch, events=False, overlap_writes=True
    )
    stats = watcher.run(idle_exit_s=0.0)
    times = sorted(r["judged_at"] for r in log.iter_search(Search()))
    log.close()
    per_batch = (times[-1] - times[0]) / max(1, stats.batches - 1)  # the first batch's own time added
    return stats.judged / (times[-1] - times[0] + per_batch)


def latency(predictor, source: Path, work: Path, rate_hz: float, frames: int, batch: int) -> dict:
    """Arrival-to-row seconds of ``frames`` frames renamed in at ``rate_hz``: p50, p99, and whether
    the backlog grew (the last frames waited more than twice the first ones)."""
    from steel_defect.line.log import InspectionLog, Search
    from steel_defect.line.watch import Watcher

    folder = work / f"arrive{time.monotonic_ns()}"
    folder.mkdir()
    log = InspectionLog.open(folder.with_suffix(".sqlite"))
    watcher = Watcher(
        folder, log, predictor, settle_s=60.0, poll_s=0.05, batch_size=batch, events=True, overlap_writes=True
    )
    stop = threading.Event()
    loop = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    loop.start()
    while watcher.state != "running":
        time.sleep(0.01)
    names = sorted(p.name for p in source.iterdir())
    arrivals: dict[str, float] = {}
    arrive(folder, source, [names[i % len(names)] for i in range(frames)], rate_hz, arrivals)
    deadline = time.monotonic() + 600
    while log.count() < frames and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    watcher.wake.set()
    loop.join(timeout=60)
    rows = {r["name"]: r["judged_at"] for r in log.iter_search(Search())}
    log.close()
    delays = [rows[n] - arrivals[n] for n in sorted(arrivals) if n in rows]
    tenth = max(1, len(delays) // 10)
    return {
        "p50": float(np.percentile(delays, 50)),
        "p99": float(np.percentile(delays, 99)),
        "behind": statistics.mean(delays[-tenth:]) > 2 * statistics.mean(delays[:tenth]) + 0.1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", action="append", help="NAME=SOURCE[:BACKEND[:PRECISION]] (repeatable)")
    parser.add_argument("--frames", type=int, default=48, help="frames dropped at once")
    parser.add_argument("--rate", type=float, default=10.0, help="frames a second offered for the latency")
    parser.add_argument("--latency-frames", type=int, default=60)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--isa-avx2", action="store_true", help="rerun in a child capped at AVX2")
    parser.add_argument(
        "--gate",
        choices=("spec", "off", "both"),
        default="spec",
        help="the tuned pipelines' clean-frame gate: as their spec has it, off, or both side by side",
    )
    args = parser.parse_args()
    if args.isa_avx2 and os.environ.get("ONEDNN_MAX_CPU_ISA") != "AVX2":
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
        sys.exit(subprocess.call([sys.executable, *sys.argv], env=env))
    import cv2

    flags = cpu_flags()
    known = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
    isa = [f for f in known if f in flags]
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    machine = f"{cpu_name()}, {os.cpu_count()} cores, {args.threads} threads"
    print(f"# {machine}; ISA {' '.join(isa)}; oneDNN cap {cap}")
    peaks = matmul_peaks(args.threads)
    print("# matmul peak, GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    with tempfile.TemporaryDirectory(prefix="line_rate.") as tmp:
        work = Path(tmp)
        source = frames_folder(work, args.frames)
        print(
            f"# frames: {args.frames} {'real' if REAL_FRAMES.is_dir() else 'synthetic'}, batch {args.batch}"
        )
        images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(source.iterdir())]
        header = (
            "| pipeline | backend | precision | GFLOP/frame | model ms/frame | floor ms | x floor "
            "| watch frames/s | skipped | p50 ms | p99 ms |"
        )
        print(header)
        print("|" + "---|" * (header.count("|") - 1))
        for spec in args.pipeline or ["ensemble"]:
            name, predictor, backend, precision = build(spec, work, args.threads, args.gate != "off")
            gates = [predictor.clean_gate] + ([None] if args.gate == "both" and predictor.clean_gate else [])
            for gate in gates:
                predictor.clean_gate = gate  # one predictor: the same sessions with and without
                label = name if gate is not None or len(gates) == 1 else f"{name} (no gate)"
                row(label, predictor, backend, precision, peaks, images, source, work, args)


def row(name, predictor, backend, precision, peaks, images, source, work, args) -> None:
    """Measure one pipeline and print its table row."""
    gflop = frame_gflop(predictor)
    model = model_seconds(predictor, images[: 4 * args.batch], args.batch)
    floor = gflop / peaks.get(precision, peaks["fp32"]) if gflop else None
    before = dict(predictor.stats)
    rate = watch_rate(predictor, source, work, args.batch)
    frames = predictor.stats["frames"] - before["frames"]
    skipped = frames - (predictor.stats["segmented"] - before["segmented"])
    late = latency(predictor, source, work, args.rate, args.latency_frames, args.batch)
    cells = [name, backend, precision]
    cells += (
        [f"{gflop:.1f}", f"{1000 * model:.0f}", f"{1000 * floor:.0f}", f"{model / floor:.1f}"]
        if floor
        else ["n/a", f"{1000 * model:.0f}", "n/a", "n/a"]
    )
    behind = " (falls behind)" if late["behind"] else ""
    cells += [f"{rate:.2f}", f"{skipped / max(frames, 1):.0%}"]
    cells += [f"{1000 * late['p50']:.0f}{behind}", f"{1000 * late['p99']:.0f}"]
    print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
