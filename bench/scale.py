"""The whole pipeline at Kaggle scale: wall time, peak RSS and growth exponent of every stage.

Run: ``.venv/bin/python bench/scale.py [--sizes 1000 4000 12568] [--test 5506] [--workers 2]
[--work-dir work/scale]``.

One synthetic Severstal-layout set of ``max(--sizes)`` training frames and ``--test`` test
frames (1600x256 JPEGs) is generated once, in ``--workers`` processes, and reused by later runs
(its ``train.csv`` is written last, so a complete folder has one). Each size N is a folder of
links to the first N training frames and to a proportional share of the test frames (all
``--test`` of them at the largest N). Every stage runs as the command a user types, in a fresh
process, timed from launch to exit with its peak resident memory (``ru_maxrss`` of the child):

* ``split``: the 5-fold stratified split;
* ``train``: each of the 5 folds for a fixed 20 training batches and 5 validation batches (the
  loader and the step, not whole epochs), five commands, their seconds summed and the largest
  peak RSS;
* ``thresholds``: the out-of-fold prediction of all N frames (each by the fold that held it
  out) and the search, as after a full 5-fold training;
* ``predict`` of the test share with the tuned pipeline, ``evaluate``, ``report``, ``runs``.

The model is the tests' small segmenter (``configs/demo/synth_seg.yml``, no weights) reading the
frames at 64x400, so the network's forward pass, linear in N by construction, does not hide the
pipeline's own costs: decoding, full-resolution maps, post-processing, RLE, the search's
tables, the CSVs. The table gives each stage's seconds and MB per size and the growth exponents
log(t2 / t1) / log(N2 / N1) between neighbouring sizes (1.0: linear; the goal is <= 1.1).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from steel_defect.data.annotations import read_annotations, write_annotations
from steel_defect.data.synth import mark_synthetic, write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/demo/synth_seg.yml"
FOLDS = 5
SMALL = [
    "transforms.train=[{name: Resize, params: {height: 64, width: 400}}, {name: Normalize}]",
    "transforms.valid=[{name: Resize, params: {height: 64, width: 400}}, {name: Normalize}]",
    "model.encoder_weights=null",
    f"folds.n_splits={FOLDS}",
    "data.batch_size=8",
    "data.num_workers=0",
]


def full_set(root: Path, n_train: int, n_test: int, workers: int) -> Path:
    """The generated set (made once: reused while its train.csv is there)."""
    out = root / f"synth_{n_train}_{n_test}"
    if not (out / "train.csv").is_file():
        if out.exists():
            shutil.rmtree(out)  # a killed generation: start over
        t0 = time.perf_counter()
        write_synthetic_dataset(
            out, n_train + n_test, seed=0, test_fraction=n_test / (n_train + n_test), workers=workers
        )
        print(
            f"generated {n_train} + {n_test} frames in {time.perf_counter() - t0:.0f} s ({workers} processes)"
        )
    return out


def subset(full: Path, root: Path, n_train: int, n_test: int) -> Path:
    """A Severstal-layout folder of links to the first frames of ``full``."""
    out = root / f"n{n_train}"
    if (out / "train.csv").is_file():
        return out
    train = read_annotations(full / "train.csv")
    truth = read_annotations(full / "test_truth.csv")
    train_ids, test_ids = sorted(train.image_ids)[:n_train], sorted(truth.image_ids)[:n_test]
    for folder, ids in (("train_images", train_ids), ("test_images", test_ids)):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for image_id in ids:
            link = out / folder / image_id
            if not link.exists():
                link.symlink_to(full / folder / image_id)
    write_annotations(out / "test_truth.csv", test_ids, [truth.rles(i) for i in test_ids])
    with open(out / "sample_submission.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageId_ClassId", "EncodedPixels"])
        writer.writerows([f"{i}_{c}", "1 1"] for i in test_ids for c in (1, 2, 3, 4))
    mark_synthetic(out)
    write_annotations(out / "train.csv", train_ids, [train.rles(i) for i in train_ids])
    return out


def timed_one(argv: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one command in a fresh process."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "CUDA_VISIBLE_DEVICES": ""}
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "steel_defect.cli", *argv],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise RuntimeError(f"steel-defect {argv[0]} failed:\n{err.read().decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024  # kB on Linux


def timed(commands: list[list[str]], cwd: Path) -> tuple[float, float]:
    """Summed wall seconds and the largest peak RSS (MB) of commands run one after another."""
    runs = [timed_one(argv, cwd) for argv in commands]
    return sum(t for t, _ in runs), max(m for _, m in runs)


def stages(data: Path, work: Path) -> dict[str, list[list[str]]]:
    opts = [f"paths.data_dir={data}", f"paths.work_dir={work}", *SMALL]
    post = work / "postprocessing.yml"
    sub = work / "submission.csv"
    return {
        "split": [["split", "--config", str(CONFIG), "--opts", *opts]],
        "train": [
            [
                "train", "--config", str(CONFIG), "--fold", str(fold), "--opts", *opts, "train.epochs=1",
                "train.max_train_batches=20", "train.max_valid_batches=5", "train.save_top_k=0",
            ]
            for fold in range(FOLDS)
        ],
        "thresholds": [["thresholds", "--config", str(CONFIG), "--opts", *opts]],
        "predict": [[
            "predict", "--postprocessing", str(post), "--images", str(data / "test_images"),
            "--sample-submission", str(data / "sample_submission.csv"), "--out", str(sub),
        ]],
        "evaluate": [["evaluate", "--pred", str(sub), "--truth", str(data / "test_truth.csv")]],
        "report": [[
            "report", "--pred", str(sub), "--truth", str(data / "test_truth.csv"),
            "--images", str(data / "test_images"), "--out", str(work / "report.html"),
            "--search-report", str(post.with_suffix(".report.json")),
        ]],
        "runs": [["runs", str(work)]],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 12568])
    parser.add_argument("--test", type=int, default=5506, help="test frames at the largest size")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="generation processes")
    parser.add_argument("--work-dir", type=Path, default=REPO / "work" / "scale")
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    root = args.work_dir.resolve()
    root.mkdir(parents=True, exist_ok=True)
    full = full_set(root, sizes[-1], args.test, args.workers)
    results: dict[int, dict[str, tuple[float, float]]] = {}
    for n in sizes:
        n_test = round(args.test * n / sizes[-1])
        data = subset(full, root, n, n_test)
        work = root / f"run_n{n}"
        shutil.rmtree(work, ignore_errors=True)
        results[n] = {}
        for name, argv in stages(data, work).items():
            results[n][name] = timed(argv, root)
            print(
                f"N={n} ({n_test} test) {name}: {results[n][name][0]:.1f} s, {results[n][name][1]:.0f} MB",
                flush=True,
            )
    names = list(results[sizes[0]])
    print(
        f"\n{'stage':<12}"
        + "".join(f"{'N=' + str(n):>18}" for n in sizes)
        + "".join(f"{f'exp {a}->{b}':>16}" for a, b in itertools.pairwise(sizes))
    )
    for name in names:
        cells = "".join(f"{results[n][name][0]:>9.1f} s{results[n][name][1]:>6.0f} MB" for n in sizes)
        exps = "".join(
            f"{math.log(results[b][name][0] / results[a][name][0]) / math.log(b / a):>16.2f}"
            for a, b in itertools.pairwise(sizes)
        )
        print(f"{name:<12}{cells}{exps}")
    print("exp: the growth exponent of the wall time between neighbouring sizes (1.0 = linear)")


if __name__ == "__main__":
    main()
