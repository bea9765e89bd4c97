"""`make demo` across the noise a user's machine brings: seeds, thread counts, instruction sets.

Run: ``.venv/bin/python bench/demo_spread.py [--seeds 0 1 2] [--threads 1 2] [--isa native avx2]
[--work-dir work/demo_spread] [--opts key=value ...]``.

Each cell is one whole ``steel-defect demo`` in a subprocess (data, folds, training, out-of-fold
thresholds, submission, score), so nothing is shared between cells but the files they write. A
cell's test Dice stands beside all-empty masks on the same frames, with class 3 (the common
class) on its own, the training and total times, and which oneDNN convolution kernels its
process ran. ``avx2`` imitates an AVX2-only CPU (a Zen 1 EPYC, say) on this one:
``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2`` and ``ATEN_CPU_CAPABILITY=avx2``
(oneDNN, MKL and torch's own kernels), and ``train.amp: auto`` then means fp32 there, as on
such a machine. The kernel column is probed in each cell's environment (one training step of a
convolution with ``ONEDNN_VERBOSE=1``), so the table shows that the cap did change the kernels.

The last lines give the spread: the smallest and largest gain over empty masks, and how many
cells reach the goal (+0.03 mean, class 3 above empty). A finished cell (its ``summary.json``)
is reused, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchdata import REPO

ISAS = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
GOAL = 0.03
# One forward and backward pass of a convolution: the kernels training's convolutions run on.
PROBE = """
import torch
torch.set_num_threads(1)
conv = torch.nn.Conv2d(32, 32, 3, padding=1)
x = torch.randn(2, 32, 64, 64, requires_grad=True)
conv(x).sum().backward()
"""


def environment(isa: str, threads: int) -> dict:
    env = {**os.environ, **ISAS[isa], "OMP_NUM_THREADS": str(threads)}
    env.pop("ONEDNN_VERBOSE", None)
    return env


def kernels(env: dict) -> str:
    """The oneDNN convolution implementations a training step runs under ``env``."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**env, "ONEDNN_VERBOSE": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    found = sorted(set(re.findall(r"exec,cpu,convolution,([^,]+),", done.stdout + done.stderr)))
    return " ".join(found) or "no oneDNN convolution"


def run_cell(work: Path, seed: int, threads: int, isa: str, opts: list[str]) -> dict:
    """One whole demo; its summary (reused when it has run already)."""
    out = work / f"seed{seed}_t{threads}_{isa}"
    summary = out / "summary.json"
    if not summary.is_file():
        env = environment(isa, threads)
        command = [sys.executable, "-m", "steel_defect.cli", "demo", "--work-dir", str(out)]
        command += ["--seed", str(seed), "--opts", f"train.threads={threads}", *opts]
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "demo.log", "w") as log:
            subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    result = json.loads(summary.read_text())
    result["kernels"] = kernels(environment(isa, threads))
    return result


def row(seed: int, threads: int, isa: str, s: dict) -> str:
    t = s["timings"]
    train = t.get("train_classifier_s", 0) + t.get("train_segmenter_s", 0)
    gain = s["mean_dice"] - s["empty_baseline"]
    c3, e3 = s["per_class"]["3"], s["empty_per_class"]["3"]
    return (
        f"| {seed} | {threads} | {isa} | {s['mean_dice']:.4f} | {s['empty_baseline']:.4f} | {gain:+.4f} "
        f"| {c3:.4f} ({e3:.4f}) | {train:.0f} | {t['total_s']:.0f} | {s['kernels']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--isa", nargs="+", choices=sorted(ISAS), default=["native", "avx2"])
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "demo_spread")
    parser.add_argument("--opts", nargs="*", default=[], help="key=value overrides of the demo's segmenter")
    args = parser.parse_args()
    print(
        "| seed | threads | kernels cap | test Dice | empty | gain | class 3 (empty) | train s | total s "
        "| oneDNN conv |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    gains, class3_above = [], 0
    start = time.perf_counter()
    for isa in args.isa:
        for threads in args.threads:
            for seed in args.seeds:
                summary = run_cell(args.work_dir, seed, threads, isa, args.opts)
                print(row(seed, threads, isa, summary), flush=True)
                gains.append(summary["mean_dice"] - summary["empty_baseline"])
                class3_above += summary["per_class"]["3"] > summary["empty_per_class"]["3"]
    print(
        f"\ngain over empty masks: {min(gains):+.4f} .. {max(gains):+.4f} "
        f"(spread {max(gains) - min(gains):.4f}); "
        f"{sum(g >= GOAL for g in gains)} of {len(gains)} cells reach +{GOAL}, {class3_above} have class 3 "
        f"above empty; {time.perf_counter() - start:.0f} s in all"
    )


if __name__ == "__main__":
    main()
