"""Active learning against random picks: Dice on a fixed test set against the number of labels.

Run (synthetic pool, 3 seeds):

    .venv/bin/python bench/active_learning.py --work-dir work/al_synth

and on the real sample, its labels as the oracle, each quarter held out once:

    .venv/bin/python bench/active_learning.py --data-dir ../shared/data/severstal_sample \\
        --work-dir work/al_real --start 10 --step 10 --rounds 3 --seeds 0

Each round trains one segmenter (fold 0 of a 5-fold split of the labelled frames: the other
folds train, fold 0 validates), tunes its thresholds out of fold on fold 0 with the project's
search (``search_thresholds``), and scores the test frames with that tuned pipeline. Then the
strategy picks the next ``--step`` frames of the unlabelled pool: ``queue`` ranks them as
``steel-defect labels queue`` does (per-class uncertainty and flip-view disagreement, near-copies
moved back, :mod:`steel_defect.labels.queue`), ``random`` draws them. The first round's frames
are the same random draw for both. Nothing is timed: the table is Dice, pooled over seeds (and
over quarters on the real sample), per class beside all-empty masks on the same test frames.
A finished round (its ``result.json``) is reused, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from steel_defect.config import load_config
from steel_defect.constants import CLASS_IDS
from steel_defect.data.annotations import read_annotations, resolve_image_ids, write_annotations
from steel_defect.data.folds import split_folds
from steel_defect.data.images import read_image
from steel_defect.data.rle import rles_to_masks
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.demo import HOLDOUT_PARTS, _holdout_real
from steel_defect.evaluation.metric import dice_pairs
from steel_defect.inference.oof import search_thresholds
from steel_defect.inference.pipeline import build_predictor
from steel_defect.inference.postprocess import PostProcessing, postprocess
from steel_defect.labels.queue import diverse_order, score_batch
from steel_defect.training.runner import train

REPO = Path(__file__).resolve().parents[1]
SYNTH_CONFIG = REPO / "configs/demo/synth_seg.yml"
REAL_CONFIG = REPO / "configs/real/unet_effnet_lite0.yml"
# Quarter-resolution synthetic frames: a round trains in well under a minute on two cores.
SYNTH_OPTS = [
    "transforms.train=[{name: Resize, params: {height: 64, width: 400}}, "
    "{name: HorizontalFlip, params: {p: 0.5}}, "
    "{name: VerticalFlip, params: {p: 0.5}}, {name: Normalize}]",
    "transforms.valid=[{name: Resize, params: {height: 64, width: 400}}, {name: Normalize}]",
]
STEPS = 100  # optimiser steps per round, whatever the labelled count (few labels: more epochs)
BATCH = 4
KEYS = {
    "dice": "tuned pipeline (thresholds searched out of fold on the labelled frames):",
    "fixed": "bare model (threshold 0.5, no size filter):",
}


def _train_round(config: Path, opts: list[str], data: dict, labelled: list[str], work: Path, seed: int):
    """Train on ``labelled`` (fold 0 validates), search its thresholds; the tuned predictor."""
    annotations = data["annotations"]
    work.mkdir(parents=True, exist_ok=True)
    write_annotations(work / "train.csv", labelled, [annotations.rles(i) for i in labelled])
    epochs = max(4, math.ceil(STEPS / math.ceil(0.8 * len(labelled) / BATCH)))
    cfg = load_config(
        config,
        [
            *opts,
            f"paths.train_csv={work / 'train.csv'}",
            f"paths.train_images={data['images']}",
            f"paths.work_dir={work / 'seg'}",
            f"paths.folds_csv={work / 'folds.csv'}",
            "folds.n_splits=5",
            f"seed={seed}",
            f"data.batch_size={BATCH}",
            f"train.epochs={epochs}",
            "train.save_top_k=0",
            "inference.tta=[hflip]",
        ],
    )
    split_folds(cfg)
    train(cfg, fold=0)
    post = work / "postprocessing.yml"
    search_thresholds(cfg, None, post)
    return build_predictor(post)


def _score(predictor, frames: dict, truth: np.ndarray, ids: list[str]) -> dict:
    """Dice of the tuned pipeline and of the bare model (threshold 0.5, no size filter: with few
    labels the out-of-fold search rightly switches classes off, which hides how the model improves)."""
    predictions = _predict(predictor, [frames[i] for i in ids])
    tuned = dice_pairs(np.stack([p.masks for p in predictions]), truth)
    fixed = dice_pairs(np.stack([postprocess(p.levels, PostProcessing()) for p in predictions]), truth)
    empty = dice_pairs(np.zeros_like(truth), truth)
    return {
        "per_class": tuned.mean(0).tolist(),
        "empty_per_class": empty.mean(0).tolist(),
        "dice": tuned.tolist(),
        "fixed": fixed.tolist(),
        "empty": empty.tolist(),
    }


def _predict(predictor, images: list[np.ndarray], batch: int = 4):
    out = []
    for start in range(0, len(images), batch):
        out += predictor.predict(images[start : start + batch], skip_gated=False)
    return out


def _pick(strategy: str, predictor, frames: dict, pool: list[str], k: int, rng) -> list[str]:
    if strategy == "random" or len(pool) <= k:
        return list(rng.permutation(pool)[:k])
    scores, thumbs = [], []
    for start in range(0, len(pool), 4):
        _, batch_scores, _, batch_thumbs = score_batch(
            predictor, [frames[i] for i in pool[start : start + 4]]
        )
        scores += batch_scores
        thumbs.append(batch_thumbs)
    order, _ = diverse_order(np.array(scores), np.concatenate(thumbs))
    return [pool[i] for i in order[:k]]


def run_curve(strategy: str, seed: int, data: dict, args, work: Path) -> list[dict]:
    """Rounds of one strategy and seed: [{labelled, per_class, empty_per_class, ...}]."""
    rng = np.random.default_rng(1000 + seed)
    pool = list(data["pool"])
    labelled = list(rng.permutation(pool)[: args.start])  # the same first draw for both strategies
    results = []
    for round_index in range(args.rounds + 1):
        shared = round_index == 0 or len(labelled) >= len(pool)  # same frames for both strategies
        folder = work / ("shared" if shared else strategy) / f"seed{seed}" / f"n{len(labelled):03d}"
        done = folder / "result.json"
        if done.is_file():
            result = json.loads(done.read_text())
            predictor = None
        else:
            started = time.perf_counter()
            predictor = _train_round(data["config"], data["opts"], data, labelled, folder, seed)
            result = {
                "labelled": len(labelled),
                "ids": labelled,
                **_score(predictor, data["frames"], data["truth"], data["test"]),
                "seconds": time.perf_counter() - started,
            }
            done.write_text(json.dumps(result))
        results.append(result)
        print(
            f"  {strategy:6} seed {seed} n={len(labelled):3d}: mean {np.mean(result['per_class']):.4f} "
            f"(empty {np.mean(result['empty_per_class']):.4f})",
            flush=True,
        )
        if round_index == args.rounds or len(labelled) >= len(pool):
            break
        remaining = [i for i in pool if i not in set(labelled)]
        if strategy == "queue" and predictor is None:
            predictor = build_predictor(folder / "postprocessing.yml")
        labelled += _pick(strategy, predictor, data["frames"], remaining, args.step, rng)
    return results


def _load(images: Path, ids: list[str]) -> dict:
    return {i: read_image(images / i) for i in ids}


def synthetic_data(args, work: Path) -> list[dict]:
    root = work / "data"
    if not (root / "train.csv").is_file():
        write_synthetic_dataset(
            root, n=args.pool + args.test, seed=7, test_fraction=args.test / (args.pool + args.test)
        )
    annotations = read_annotations(root / "train.csv")
    pool = resolve_image_ids(annotations, root / "train_images")
    truth_annotations = read_annotations(root / "test_truth.csv")
    test = sorted(truth_annotations.image_ids)
    frames = {**_load(root / "train_images", pool), **_load(root / "test_images", test)}
    truth = np.stack([rles_to_masks(truth_annotations.rles(i)) for i in test])
    return [
        {
            "name": "synthetic",
            "annotations": annotations,
            "images": root / "train_images",
            "pool": pool,
            "test": test,
            "frames": frames,
            "truth": truth,
            "config": SYNTH_CONFIG,
            "opts": SYNTH_OPTS,
            "work": work,
        }
    ]


def real_data(args, work: Path) -> list[dict]:
    """One entry per held-out quarter: its pool is the other three quarters' frames."""
    data_dir = Path(args.data_dir)
    everything = read_annotations(data_dir / "train.csv")
    all_ids = resolve_image_ids(everything, data_dir / "train_images")
    frames = _load(data_dir / "train_images", all_ids)
    quarters = []
    for part in range(HOLDOUT_PARTS):
        quarter = work / f"holdout{part}"
        quarter.mkdir(parents=True, exist_ok=True)
        train_csv, images, test = _holdout_real(data_dir, quarter, seed=42, part=part)
        annotations = read_annotations(train_csv)
        truth = np.stack([rles_to_masks(everything.rles(i)) for i in test])
        quarters.append(
            {
                "name": f"holdout {part}",
                "annotations": annotations,
                "images": images,
                "pool": sorted(annotations.image_ids),
                "test": test,
                "frames": frames,
                "truth": truth,
                "config": REAL_CONFIG,
                "opts": [],
                "work": quarter,
            }
        )
    return quarters


def table(curves: dict[str, list[list[dict]]], key: str = "dice") -> str:
    """Pooled Dice per labelled count: every test (frame, class) of every seed and quarter once.
    ``key``: ``dice`` (the tuned pipeline) or ``fixed`` (the bare model at threshold 0.5)."""
    lines = [KEYS[key]]
    for strategy, runs in curves.items():
        counts = sorted({r["labelled"] for run in runs for r in run})
        lines.append(f"{strategy}:")
        header = " ".join(f"{'c' + str(c):>6}" for c in CLASS_IDS)
        lines.append(f"  {'labels':>6} {'mean':>7} {'empty':>7} {'gain':>7} {header}")
        for n in counts:
            rows = [r for run in runs for r in run if r["labelled"] == n]
            dice = np.concatenate([np.array(r[key]) for r in rows])
            empty = np.concatenate([np.array(r["empty"]) for r in rows])
            per_class = " ".join(f"{v:6.3f}" for v in dice.mean(0))
            lines.append(
                f"  {n:>6} {dice.mean():7.4f} {empty.mean():7.4f} {dice.mean() - empty.mean():+7.4f} "
                f"{per_class}   ({len(rows)} runs, {dice.shape[0]} test frames)"
            )
    return "\n".join(lines)


def pooled(curves: dict, strategy: str, n: int, key: str) -> float:
    return float(
        np.concatenate(
            [np.array(r[key]) for run in curves[strategy] for r in run if r["labelled"] == n]
        ).mean()
    )


def labels_to_reach(curves: dict, strategy: str, target: float, key: str) -> int | None:
    for n in sorted({r["labelled"] for run in curves[strategy] for r in run}):
        if pooled(curves, strategy, n, key) >= target:
            return n
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="a real Severstal-layout folder (default: a synthetic pool)")
    parser.add_argument("--work-dir", default="work/al_synth")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--start", type=int, default=20)
    parser.add_argument("--step", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pool", type=int, default=240, help="synthetic pool size")
    parser.add_argument("--test", type=int, default=60, help="synthetic test frames")
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    datasets = real_data(args, work) if args.data_dir else synthetic_data(args, work)
    curves: dict[str, list[list[dict]]] = {"random": [], "queue": []}
    for data in datasets:
        print(f"{data['name']}: pool {len(data['pool'])}, test {len(data['test'])}", flush=True)
        for seed in args.seeds:
            for strategy in curves:
                curves[strategy].append(run_curve(strategy, seed, data, args, data["work"]))
    summary = {}
    final = max(r["labelled"] for run in curves["random"] for r in run)
    for key in KEYS:
        print(table(curves, key))
        target = pooled(curves, "random", final, key)
        reached = labels_to_reach(curves, "queue", target, key)
        share = f"{reached / final:.0%}" if reached else "not within the rounds run"
        print(
            f"random's final Dice {target:.4f} with {final} labels; "
            f"the queue reaches it with {reached} ({share})"
        )
        summary[key] = {
            "target": target,
            "final": final,
            "queue_reaches": reached,
            "table": table(curves, key),
        }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
