"""The top solutions' techniques side by side on the synthetic demo: each part on, all else equal.

Run: ``.venv/bin/python bench/techniques.py [--work work/techniques] [--only NAME ...] [--epochs E]``.
Every variant trains the demo's segmenter (``configs/demo/synth_seg.yml``: Unet-resnet18,
128x800 frames, 10 epochs) on fold 0 of the same synthetic data (240 frames, seed 0; the same
split), tunes its thresholds on fold 0's validation images (out of fold) and predicts the same
60 synthetic test frames, which neither training nor the search sees. The baseline is that
run as it is; each other row changes one thing:

* ``classifier``: the baseline's segmenter gated by the demo's separate 5-class classifier
  (``configs/demo/synth_cls.yml``, fold 0), the pair the two-head model replaces;
* ``two_head_hard`` / ``two_head_soft``: ``model.cls_head`` (the encoder's deepest features feed a
  presence head trained jointly); hard: the search tunes the head's gate; soft: maps x head;
* ``balanced``: ``data.sampler: balanced`` (half the draws defect images, half defect-free);
* ``combo``: ``0.75 BCE + 0.25 Lovasz hinge`` instead of BCE + Dice;
* ``swa``: the average of the 3 best epochs' weights (BatchNorm recomputed) predicts;
* ``snapshots``: 2 cosine cycles of 5 epochs; both cycle-end snapshots predict as an ensemble
  (the search averages them the same way);
* ``top_gate``: the baseline's checkpoint, with the search allowed a per-class top-threshold gate;
* ``per_class``: 4 binary segmenters, one per class (``model.classes: [c]``), as one ensemble.

One table: test mean Dice and per class, beside all-empty masks, and the out-of-fold mean.
Training is seeded, but CPU kernels are not bit-reproducible across thread counts, so rerun a
row before trusting a difference under about 0.01 (README, "What repeats"). ``--train-seed S``
reruns the chosen variants with another training seed (initialisation, draw order, augmentation)
on the same data and split, stored as ``<variant>@seed<S>``: how far two runs of one row land
apart is the noise the other rows' differences must clear.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from benchdata import REPO

from steel_defect.config import load_config
from steel_defect.data.annotations import read_annotations
from steel_defect.data.folds import split_folds
from steel_defect.data.submission import write_submission
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.evaluation.metric import evaluate_files
from steel_defect.inference.oof import search_thresholds
from steel_defect.inference.pipeline import build_predictor
from steel_defect.inference.run import predict_folder
from steel_defect.training.runner import train

CONFIG = REPO / "configs/demo/synth_seg.yml"
CLS_CONFIG = REPO / "configs/demo/synth_cls.yml"
LOVASZ = "loss.params={terms: [{name: bce, weight: 0.75}, {name: lovasz_hinge, weight: 0.25}]}"
VARIANTS = {
    "baseline": [],
    "classifier": [],
    "two_head_hard": ["model.cls_head={gate: hard}"],
    "two_head_soft": ["model.cls_head={gate: soft}"],
    "balanced": ["data.sampler=balanced"],
    "combo": ["loss.name=combo", LOVASZ],
    "swa": ["train.swa=3", "train.save_top_k=3"],
    "snapshots": ["scheduler.name=cosine_restarts", "scheduler.params={cycles: 2}", "train.snapshots=true"],
    "top_gate": ["inference.search_top_threshold=true"],
    "per_class": [],
}


def _train(cfg) -> Path:
    """Train fold 0; its best checkpoint."""
    return Path(train(cfg, fold=0)["run_dir"]) / "checkpoints" / "best.pth"


def _member(cfg, checkpoint: Path, root: Path, opts: list[str]):
    """A config whose fold 0 is ``checkpoint``: how the search averages extra models of fold 0."""
    (root / "fold0" / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, root / "fold0" / "checkpoints" / "best.pth")
    return load_config(CONFIG, [*opts, f"paths.work_dir={root}"])


def run_variant(name: str, common: list[str], work: Path, data: Path, out: Path | None = None) -> dict:
    out = out or work / name
    opts = [*common, f"paths.work_dir={out / 'seg'}", *VARIANTS[name]]
    start = time.perf_counter()
    members, cls_cfg = [], None
    if name == "classifier":  # the baseline's segmenter, gated by a classifier trained on fold 0
        cfg = load_config(CONFIG, [*common, f"paths.work_dir={work / 'baseline' / 'seg'}"])
        cls_cfg = load_config(CLS_CONFIG, [*common, f"paths.work_dir={out / 'cls'}"])
        checkpoints = [work / "baseline" / "seg" / "fold0" / "checkpoints" / "best.pth", _train(cls_cfg)]
    elif name == "top_gate":  # the baseline's model, a wider search
        cfg = load_config(CONFIG, [*common, f"paths.work_dir={work / 'baseline' / 'seg'}", *VARIANTS[name]])
        checkpoints = [work / "baseline" / "seg" / "fold0" / "checkpoints" / "best.pth"]
    elif name == "per_class":
        cfgs = [
            load_config(CONFIG, [*opts, f"paths.work_dir={out / f'class{c}'}", f"model.classes=[{c}]"])
            for c in (1, 2, 3, 4)
        ]
        checkpoints = [_train(c) for c in cfgs]
        cfg, members = cfgs[0], cfgs[1:]
    else:
        cfg = load_config(CONFIG, opts)
        best = _train(cfg)
        checkpoints = [best]
        directory = best.parent
        if name == "swa":  # the search tunes each fold's swa.pth instead of its best.pth
            cfg = load_config(CONFIG, [*opts, "inference.search_checkpoint=swa"])
            checkpoints = [directory / "swa.pth"]
        elif name == "snapshots":
            snapshots = sorted(directory.glob("snapshot_*.pth"))
            cfg = _member(cfg, snapshots[0], out / "snapshot0", opts)
            members = [_member(cfg, s, out / f"snapshot{i}", opts) for i, s in enumerate(snapshots[1:], 1)]
            checkpoints = snapshots
    search = search_thresholds(cfg, cls_cfg, out / "postprocessing.yml", members=members, record=False)
    predictor = build_predictor(out / "postprocessing.yml", checkpoints)
    predict_folder(
        predictor,
        data / "test_images",
        out / "submission.csv",
        data / "sample_submission.csv",
        progress=False,
    )
    score = evaluate_files(out / "submission.csv", data / "test_truth.csv")
    return {
        "mean": score["mean_dice"],
        "per_class": score["per_class"],
        "oof": search["mean"]["best_dice"],
        "minutes": (time.perf_counter() - start) / 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "work/techniques")
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), help="variants to run (default all)")
    parser.add_argument("--epochs", type=int, help="override train.epochs (default the demo's 10)")
    parser.add_argument("--n", type=int, default=240, help="synthetic frames (train + test)")
    parser.add_argument("--train-seed", type=int, help="rerun with this training seed (same data and split)")
    args = parser.parse_args()
    data = args.work / "data"
    if not (data / "train.csv").is_file():
        write_synthetic_dataset(data, n=args.n, seed=0)
    common = [
        f"paths.train_csv={data / 'train.csv'}",
        f"paths.train_images={data / 'train_images'}",
        f"paths.folds_csv={args.work / 'folds.csv'}",
        "seed=0",
        *([f"train.epochs={args.epochs}"] if args.epochs else []),
    ]
    split_folds(load_config(CONFIG, [*common, f"paths.work_dir={args.work}"]))
    empty = args.work / "empty.csv"
    ids = read_annotations(data / "test_truth.csv").image_ids
    write_submission(empty, ids, [[""] * 4 for _ in ids])
    baseline = evaluate_files(empty, data / "test_truth.csv")
    results_path = args.work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    names = args.only or list(VARIANTS)
    if {"top_gate", "classifier"} & set(names) and "baseline" not in names and "baseline" not in results:
        names.insert(0, "baseline")
    for name in names:
        if args.train_seed is None:
            results[name] = run_variant(name, common, args.work, data)
            continue
        key = f"{name}@seed{args.train_seed}"  # the split is already written: only training changes
        seeded = [*common, f"seed={args.train_seed}"]
        results[key] = run_variant(name, seeded, args.work, data, args.work / key)
        results_path.write_text(json.dumps(results, indent=2))
    print(f"{len(ids)} synthetic test frames; mean Dice (per class 1-4); OOF = fold 0's validation images")
    print(f"{'variant':<16}{'mean':>8}{'c1':>8}{'c2':>8}{'c3':>8}{'c4':>8}{'OOF':>8}{'min':>6}")
    rows = [
        (
            "all-empty",
            {
                "mean": baseline["mean_dice"],
                "per_class": baseline["per_class"],
                "oof": float("nan"),
                "minutes": 0,
            },
        )
    ]
    for name, r in [*rows, *results.items()]:
        per = "".join(f"{r['per_class'][str(c)]:>8.4f}" for c in (1, 2, 3, 4))
        print(f"{name:<16}{r['mean']:>8.4f}{per}{r['oof']:>8.4f}{r['minutes']:>6.1f}")


if __name__ == "__main__":
    main()
