"""CPU backends side by side: ONNX Runtime's CPU EP, OpenVINO's own runtime (both performance
hints) and ONNX Runtime's OpenVINO EP, in fp32 and int8, for batches of 1 and 4 frames.

Run: ``.venv/bin/python bench/backends.py [--threads 2] [--rounds 5] [--ort-openvino PYTHON]``.

The model is an untrained Unet-EfficientNet-Lite0 at full resolution (``configs/real/
unet_effnet_lite0_fullres.yml`` with ``encoder_weights: null``: 3x256x1600 in, 4 maps out; speed
does not depend on the weights), exported as ``steel-defect export`` does. int8 is ONNX Runtime's
static QDQ model and OpenVINO's NNCF IR, both calibrated on the same 8 synthetic frames.

``onnxruntime-openvino`` replaces the ``onnxruntime`` package (both install the module
``onnxruntime``), so it is not in the project's environment: ``--ort-openvino`` names the Python of
a separate venv that has it (``python3 -m venv /tmp/ortov && /tmp/ortov/bin/pip install
onnxruntime-openvino numpy``), which runs those rows in a worker process fed the same inputs.

Every round times each row once per batch size, in a rotating order, so a busy moment of the
shared machine slows every row of that round. Printed: the median over rounds of each row's
speed relative to ONNX Runtime's CPU EP in fp32 at the same batch size, timed in the same round
(> 1 is faster), its range over rounds, and the median seconds per frame beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from benchdata import REPO, synthetic_images

from steel_defect.config import load_config
from steel_defect.data.images import read_image
from steel_defect.inference.onnx_backend import load_onnx
from steel_defect.inference.onnx_export import export_onnx, quantize_int8
from steel_defect.inference.openvino_backend import (
    compile_model,
    cpu_capabilities,
    has_bf16,
    network_from_compiled,
    read_model,
)
from steel_defect.inference.openvino_export import quantize_openvino_int8
from steel_defect.models import build_model
from steel_defect.training.checkpoint import save_checkpoint

CONFIG = "configs/real/unet_effnet_lite0_fullres.yml"
BATCHES = (1, 4)
REFERENCE = "ORT CPU EP fp32"

# The worker run by the onnxruntime-openvino venv: one session per model on the OpenVINO EP,
# then "name batch" lines in, seconds out.
WORKER = r"""
import json, sys, time
import numpy as np
import onnxruntime as ort
models, threads, shape = json.loads(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
sessions = {}
for name, path in models.items():
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    provider = {"device_type": "CPU", "num_of_threads": str(threads), "precision": "FP32"}
    sessions[name] = ort.InferenceSession(path, options, providers=[("OpenVINOExecutionProvider", provider)])
    assert sessions[name].get_providers()[0] == "OpenVINOExecutionProvider", sessions[name].get_providers()
batch = np.random.default_rng(0).normal(size=(max(shape[0]), *shape[1])).astype(np.float32)
print(json.dumps({"ready": ort.__version__}), flush=True)
for line in sys.stdin:
    name, n = line.split()
    start = time.perf_counter()
    sessions[name].run(None, {"image": batch[: int(n)]})
    print(time.perf_counter() - start, flush=True)
"""


class Worker:
    """Rows timed in the onnxruntime-openvino venv, one call at a time."""

    def __init__(self, python: str, models: dict[str, Path], threads: int, shape):
        paths = json.dumps({k: str(v) for k, v in models.items()})
        self.process = subprocess.Popen(
            [python, "-c", WORKER, paths, str(threads), json.dumps(shape)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.version = json.loads(self.process.stdout.readline())["ready"]

    def time(self, name: str, batch: int) -> float:
        self.process.stdin.write(f"{name} {batch}\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def build_models(work: Path, threads: int):
    """(fp32 export, ONNX int8, OpenVINO int8 IR) of the untrained full-size Lite0."""
    import torch

    torch.manual_seed(0)
    cfg = load_config(REPO / CONFIG, ["model.encoder_weights=null"])
    checkpoint = save_checkpoint(work / "lite0.pth", build_model(cfg), cfg, epoch=0, metrics={})
    fp32 = export_onnx(checkpoint, work / "lite0.onnx")
    frames = [read_image(p) for p in synthetic_images(work / "calib", 8, seed=1)]
    start = time.perf_counter()
    int8_onnx = quantize_int8(fp32, work / "lite0.int8.onnx", frames)
    int8_ir = quantize_openvino_int8(fp32, work / "lite0.int8.xml", frames)
    print(f"models built and quantised in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return fp32, int8_onnx, int8_ir


def openvino_rows(fp32: Path, int8_ir: Path, threads: int) -> dict:
    rows = {}
    for hint in ("LATENCY", "THROUGHPUT"):
        for label, path, precision in (("fp32", fp32, "fp32"), ("int8", int8_ir, "int8")):
            model, meta = read_model(path)
            compiled = compile_model(model, threads, precision, hint=hint)
            network = network_from_compiled(path, compiled, meta, precision)
            rows[f"OpenVINO {hint.lower()} {label}"] = network.run
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ort-openvino", metavar="PYTHON", help="Python of a venv with onnxruntime-openvino")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32, int8_onnx, int8_ir = build_models(work, args.threads)
        rows = {
            REFERENCE: load_onnx(fp32, args.threads).run,
            "ORT CPU EP int8 (QDQ)": load_onnx(int8_onnx, args.threads).run,
            **openvino_rows(fp32, int8_ir, args.threads),
        }
        shape = [list(BATCHES), [3, 256, 1600]]
        batch = np.random.default_rng(0).normal(size=(max(BATCHES), 3, 256, 1600)).astype(np.float32)
        timers = {name: partial(_timed, run, batch) for name, run in rows.items()}
        worker = None
        if args.ort_openvino:
            models = {"fp32": fp32, "int8": int8_onnx}
            worker = Worker(args.ort_openvino, models, args.threads, shape)
            for label in models:
                timers[f"ORT OpenVINO EP {label}"] = partial(worker.time, label)
        names = list(timers)
        for name in names:  # warm-up: first calls allocate, and a dynamic batch reshapes
            for n in BATCHES:
                timers[name](n)
        times = {(name, n): [] for name in names for n in BATCHES}
        for round_index in range(args.rounds):
            order = names[round_index % len(names) :] + names[: round_index % len(names)]
            for n in BATCHES:
                for name in order:
                    times[name, n].append(timers[name](n))
        if worker:
            worker.close()
    cpu, caps = cpu_capabilities()
    print(
        f"{cpu} ({', '.join(caps)}), {args.threads} threads, Unet-EfficientNet-Lite0 3x256x1600, "
        f"{args.rounds} rounds" + (f", onnxruntime-openvino {worker.version}" if worker else "")
    )
    if not has_bf16():
        print("bf16: not run, this CPU has no native bf16 (inference.precision bf16 is refused here)")
    print(f"speed relative to {REFERENCE} at the same batch, timed in the same round (> 1 is faster)")
    header = f"{'backend':<30}" + "".join(f"  {'batch ' + str(n):>22}  {'s/frame':>7}" for n in BATCHES)
    print(header)
    for name in names:
        cells = ""
        for n in BATCHES:
            ratios = np.array(times[REFERENCE, n]) / np.array(times[name, n])
            spread = f"{np.median(ratios):.2f}x ({ratios.min():.2f}-{ratios.max():.2f})"
            cells += f"  {spread:>22}  {np.median(times[name, n]) / n:7.3f}"
        print(f"{name:<30}{cells}")


def _timed(run, batch: np.ndarray, n: int) -> float:
    start = time.perf_counter()
    run(batch[:n])
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
