"""Start-up time of the commands people run after a restart, against the budgets of issue 15.

Run: ``.venv/bin/python bench/startup.py [--runs 3] [--src CHECKOUT/src [OTHER/src ...]]``.
Each command runs ``--runs`` times in a fresh interpreter (``python -m steel_defect.cli``);
the table shows the fastest wall time, the least disturbed by other work on the machine, and
the least CPU time (user + system of the child), which a busy machine disturbs much less:

* ``steel-defect --help``;
* ``evaluate`` of a small submission against its truth (8 synthetic frames);
* ``import torch``: ``python -c "import torch"``, the floor that the default ``predict`` is held to;
* ``predict`` of one full-size frame with the default backend (``auto``: ONNX Runtime on a CPU)
  and a ``.pth``: an untrained ``configs/seg/unet_resnet18_bcedice.yml`` model saved as a
  checkpoint (speed does not depend on the weights), the default config (hflip TTA), on the CPU
  (``CUDA_VISIBLE_DEVICES`` empty), its export cache warmed by one run before timing;
* ``predict, torch``: the same with ``--backend torch``;
* ``predictor ready``: the start-up part of ``predict, torch`` alone (imports, checkpoint,
  model), which the forward pass does not blur on a busy machine;
* ``predict, onnx``: the same frame through that checkpoint's ONNX export (``steel-defect
  export``, done once before timing), which imports no torch;
* ``serve`` with that checkpoint (default backend, warm cache), until ``GET /api/health`` answers.

``--src`` times other checkouts' packages (default: this one); with two, e.g. a worktree of an
older commit and this one, the table has a before and an after column measured under the same load.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchdata import REPO, synthetic_images

from steel_defect.config import load_config
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.inference.onnx_export import export_onnx
from steel_defect.models import build_model
from steel_defect.models.checkpoint import save_checkpoint

BUDGETS = {"--help": 1.5, "evaluate": 1.5, "predict, torch": 6.0, "predict, onnx": 3.0, "serve": 8.0}
_READY = (
    "import sys; from steel_defect.inference.predictor import Predictor; "
    "Predictor(sys.argv[1:], backend='torch')"
)


def _cli(src: Path) -> tuple[list[str], dict]:
    env = {**os.environ, "PYTHONPATH": str(src), "NO_ALBUMENTATIONS_UPDATE": "1", "CUDA_VISIBLE_DEVICES": ""}
    return [sys.executable, "-m", "steel_defect.cli"], env


def _cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _time_command(argv: list[str], env: dict, cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one run."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read()  # until it exits (reading keeps a chatty child from blocking)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    child.stderr.close()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:])} failed:\n{stderr.decode()[-2000:]}")
    return seconds, _cpu_seconds(usage)


def _time_serve(argv: list[str], env: dict, cwd: Path, timeout: float = 120.0) -> tuple[float, float]:
    """Wall seconds from launch until /api/health answers 200, and the server's CPU seconds
    (stopped right after, so its shutdown adds a little)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/health"
    start = time.perf_counter()
    server = subprocess.Popen(
        [*argv, "--port", str(port)], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    seconds = None
    try:
        while seconds is None and time.perf_counter() - start < timeout:
            if server.poll() is not None:
                raise RuntimeError(f"serve exited with status {server.returncode}: run it by hand to see why")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        seconds = time.perf_counter() - start
            except OSError:
                time.sleep(0.02)
    finally:
        server.terminate()
    if seconds is None:
        server.wait()
        raise RuntimeError(f"serve did not answer {url} within {timeout} s")
    _, status, usage = os.wait4(server.pid, 0)
    server.returncode = os.waitstatus_to_exitcode(status)
    return seconds, _cpu_seconds(usage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--src", type=Path, nargs="+", default=[REPO / "src"], help="package source folder(s) to time"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "data"
        write_synthetic_dataset(data, n=8, seed=0, test_fraction=0.5)
        synthetic_images(work / "one", 1)
        cfg = load_config(REPO / "configs/seg/unet_resnet18_bcedice.yml", ["model.encoder_weights=null"])
        checkpoint = str(save_checkpoint(work / "seg.pth", build_model(cfg), cfg, epoch=0, metrics={}))
        exported = str(export_onnx(checkpoint, work / "seg.onnx"))
        truth = str(data / "test_truth.csv")
        one, out = str(work / "one"), str(work / "submission.csv")
        predict = ["predict", "--untuned", "--checkpoints", checkpoint, "--images", one, "--out", out]
        commands = {
            "--help": ["--help"],
            "evaluate": ["evaluate", "--pred", truth, "--truth", truth],
            "import torch": ["-c", "import torch"],
            "predict": predict,
            "predict, torch": [*predict, "--backend", "torch"],
            "predict, onnx": [
                "predict",
                "--untuned",
                "--checkpoints",
                exported,
                "--images",
                one,
                "--out",
                out,
            ],
            # The start-up part of predict alone, without the forward pass (no budget of its own).
            "predictor ready": ["-c", _READY, checkpoint],
            "serve": ["serve", "--untuned", "--checkpoints", checkpoint, "--device", "cpu"],
        }
        runs = {(src, name): [] for src in args.src for name in commands}
        for src in args.src:  # warm each checkout's export cache (beside seg.pth), untimed
            cli, env = _cli(src.resolve())
            try:
                _time_command([*cli, *predict], env, work)
            except RuntimeError as err:
                print(f"[{src}] warming predict: {str(err).splitlines()[0]}", file=sys.stderr)
        # Interleaved (run 1 of everything, then run 2...), so a burst of load hits every
        # command and every checkout alike.
        for _ in range(args.runs):
            for name, argv in commands.items():
                for src in args.src:
                    cli, env = _cli(src.resolve())
                    timer = _time_serve if name == "serve" else _time_command
                    command = [sys.executable, *argv] if argv[0] == "-c" else [*cli, *argv]
                    try:
                        runs[src, name].append(timer(command, env, work))
                    except RuntimeError as err:  # e.g. an older checkout without the ONNX backend
                        print(f"[{src}] {name}: {str(err).splitlines()[0]}", file=sys.stderr)
                        runs[src, name].append((float("nan"), float("nan")))
    load = os.getloadavg()
    print(f"{args.runs} runs each, fastest shown; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("wall: seconds until done (serve: until /api/health answers); cpu: the child's user + system")
    for i, src in enumerate(args.src):
        print(f"[{i}] {src}")
    header = "".join(f"{f'[{i}] wall':>10}{f'[{i}] cpu':>9}" for i in range(len(args.src)))
    print(f"{'command':<16}{header} {'budget':>7}  all walls (s)")  # nan: the command failed
    for name in commands:
        best = "".join(
            f"{min(w for w, _ in runs[src, name]):>10.2f}{min(c for _, c in runs[src, name]):>9.2f}"
            for src in args.src
        )
        listed = " | ".join(" ".join(f"{w:.2f}" for w, _ in runs[src, name]) for src in args.src)
        budget = f"{BUDGETS[name]:.1f}" if name in BUDGETS else "-"
        print(f"{name:<16}{best} {budget:>7}  {listed}")
    for i, src in enumerate(args.src):
        ratio = min(w for w, _ in runs[src, "predict"]) / min(w for w, _ in runs[src, "import torch"])
        print(f"[{i}] predict (default backend, warm cache) / import torch: {ratio:.2f} (goal <= 1)")


if __name__ == "__main__":
    main()
