"""Train on the labels database: a tuned, versioned model from the frames labelled so far.

``steel-defect labels train --db labels.sqlite [--recipe real|synthetic]`` (and the page's Train
button, which runs that command in the background with ``--training-id N``) calls
:func:`train_on_labels`:

1. snapshot the labelled frames (confirmed or defect-free) into ``<work>/train.csv``;
2. the recipe's full-data path, no frame held back (:mod:`steel_defect.recipes`): a stratified
   fold split, every fold trained, the thresholds searched out of fold, and the line's distilled
   network where the recipe distils one;
3. record a model version (the labels' digest, frames per class, out-of-fold Dice beside empty
   masks, the classes not learnt yet, the spec) and promote it when its out-of-fold Dice is at
   least the promoted version's on the frames both scored (each search's ``.oof.csv`` holds the
   Dice of every (frame, class) pair), else leave the choice to ``labels promote``.

The work folder defaults to ``<db stem>.models/<time>-<digest>/`` beside the database, one per
training, so a version's spec and checkpoints stay where the version says. The training's row in
the database (:meth:`~steel_defect.labels.store.LabelStore.training_progress`) follows every
epoch; a cancelled or failed training ends its row so and records no version.
"""

from __future__ import annotations

import csv
import logging
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from steel_defect.config import layout
from steel_defect.constants import CLASS_IDS
from steel_defect.data.annotations import is_plain_name, write_annotations
from steel_defect.data.folds import split_folds
from steel_defect.distill import distill
from steel_defect.errors import UserError
from steel_defect.labels.store import LabelStore, TrainingRunning
from steel_defect.labels.store.versions import counts_of, labels_digest_of
from steel_defect.labels.transfer import images_dir
from steel_defect.recipes import RECIPES, DemoData, load_configs, train_round

log = logging.getLogger(__name__)

# a student's step costs about 0.55 of a fold model's (docs/real-steel.md); the classifier of the
# synthetic recipe runs at a quarter of the segmenter's pixels; the search is a pass over the frames
STUDENT_COST, CLASSIFIER_COST, SEARCH_SHARE = 0.55, 0.5, 0.05


class TrainingCancelled(KeyboardInterrupt):
    """Raised by the command's SIGTERM handler: the page's Cancel, or a stopped server."""


def default_work_dir(store: LabelStore, digest: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return store.path.resolve().parent / f"{store.path.stem}.models" / f"{stamp}-{digest[:8]}"


def snapshot(store: LabelStore, images: Path, min_frames: int) -> list[tuple[str, list[str]]]:
    """The labelled frames now, checked: enough for the split, plain names, every image present."""
    labelled = list(store.confirmed())
    counts = counts_of(labelled)
    if len(labelled) < min_frames:
        raise UserError(
            f"{store.path} has {counts['frames']} labelled frames ({counts['defect_free']} defect-free, "
            f"per class {counts['per_class']}); the recipe's split needs at least {min_frames} "
            "(one per fold). Label more in `steel-defect label`, or pass --opts folds.n_splits=K"
        )
    unsafe = [name for name, _ in labelled if not is_plain_name(name)]
    if unsafe:
        raise UserError(
            f"{store.path} lists frames whose name is not a plain file name (first: {unsafe[0]!r})"
        )
    missing = [name for name, _ in labelled if not (images / name).is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} labelled frames of {store.path} are missing from {images} (first: "
            f"{missing[0]}); pass --images DIR, the folder that holds them"
        )
    return labelled


class Progress:
    """Turn the recipe's events into the training row's ``{stage, fold, epoch, fraction, eta_s}``
    and a line for the console; the fraction counts epochs weighted by their cost."""

    def __init__(self, store, training_id, seg_cfg, cls_cfg, folds: int, distils: bool, echo=None):
        self.store, self.training_id, self.echo = store, training_id, echo
        self.folds = folds
        self.costs = {"segmenter": 1.0, "classifier": CLASSIFIER_COST}
        epochs = {"segmenter": seg_cfg.train.epochs, "classifier": cls_cfg.train.epochs if cls_cfg else 0}
        self.train_units = folds * sum(self.costs[n] * e for n, e in epochs.items())
        self.student_epochs = (seg_cfg.distill.epochs or seg_cfg.train.epochs) if distils else 0
        distill_units = (folds + 1) * self.student_epochs * STUDENT_COST
        self.search_units = SEARCH_SHARE * (self.train_units + distill_units)
        self.total = self.train_units + self.search_units + distill_units
        self.done = {"classifier": 0.0, "segmenter": 0.0}
        self.start = time.perf_counter()

    def __call__(self, event: dict) -> None:
        stage = event["stage"]
        if stage == "train":
            name = event["network"]
            per_fold = event["epochs"] * self.costs[name]
            self.done[name] = event["fold"] * per_fold + event["epoch"] * self.costs[name]
            units = sum(self.done.values())
        elif stage == "search":
            units = self.train_units
        elif stage == "distill":
            student_units = (event["student"] * event["epochs"] + event["epoch"]) * STUDENT_COST
            units = self.train_units + self.search_units + student_units
        else:  # split, record
            units = 0.0 if stage == "split" else self.total
        fraction = min(1.0, units / self.total) if self.total else 0.0
        elapsed = time.perf_counter() - self.start
        eta = round(elapsed * (1 - fraction) / fraction, 1) if fraction > 0 else None
        row = {"stage": stage, "fraction": round(fraction, 4), "eta_s": eta, "elapsed_s": round(elapsed, 1)}
        keys = ("network", "fold", "epoch", "epochs", "student", "students")
        row.update({k: event[k] for k in keys if k in event})
        if "fold" in event:
            row["folds"] = self.folds
        if self.training_id is not None:
            self.store.training_progress(self.training_id, row)
        if self.echo is not None:
            self.echo(progress_line(row))


def progress_line(row: dict) -> str:
    """One console line of a progress row."""
    where = ""
    if row["stage"] == "train":
        where = (
            f" {row['network']} fold {row['fold'] + 1}/{row['folds']} epoch {row['epoch']}/{row['epochs']}"
        )
    elif row["stage"] == "distill":
        where = f" student {row['student'] + 1}/{row['students']} epoch {row['epoch']}/{row['epochs']}"
    eta = f", about {row['eta_s']:.0f} s left" if row.get("eta_s") is not None else ""
    return f"{row['stage']}:{where} ({row['fraction']:.0%}{eta})"


def pair_scores(path: Path) -> dict[str, list[float]] | None:
    """``{frame: out-of-fold Dice per class}`` of a search's ``.oof.csv``; None when it has none."""
    if not Path(path).is_file():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = [f"dice_{c}" for c in CLASS_IDS]
    if not rows or any(c not in rows[0] for c in columns):
        return None
    return {r["ImageId"]: [float(r[c]) for c in columns] for r in rows}


def compare(new_spec: Path, promoted: dict) -> dict:
    """The new spec's out-of-fold Dice against the promoted version's, on the frames both scored:
    ``{"against", "frames", "new", "promoted"}`` (``frames`` 0 and no means when none or when
    the promoted version's ``.oof.csv`` holds no per-pair Dice)."""
    new = pair_scores(layout.oof_scores(new_spec)) or {}
    old = pair_scores(layout.oof_scores(promoted["spec"]))
    out = {"against": promoted["name"], "frames": 0}
    if old is None:
        out["missing"] = str(layout.oof_scores(promoted["spec"]))
        return out
    shared = sorted(set(new) & set(old))
    if shared:
        pairs = len(shared) * len(CLASS_IDS)
        out["frames"] = len(shared)
        out["new"] = sum(sum(new[i]) for i in shared) / pairs
        out["promoted"] = sum(sum(old[i]) for i in shared) / pairs
    return out


def decide(comparison: dict | None, db: Path) -> tuple[bool, str]:
    """Whether to promote, and why (the promotion's reason, or what the user may do instead)."""
    if comparison is None:
        return True, "first version"
    old = comparison["against"]
    if "missing" in comparison:
        return False, (
            f"{old}'s per-frame out-of-fold Dice ({comparison['missing']}) is missing or holds no dice_ "
            f"columns, so the two cannot be compared on the same frames; {old} stays promoted "
            "(choose with `steel-defect labels promote`)"
        )
    if not comparison["frames"]:
        return False, f"no frame was scored out of fold by both this version and {old}; {old} stays promoted"
    new, promoted, n = comparison["new"], comparison["promoted"], comparison["frames"]
    if new >= promoted - 1e-12:
        return True, f"out-of-fold Dice {new:.4f} >= {old}'s {promoted:.4f} on the {n} frames both scored"
    return False, (
        f"out-of-fold Dice {new:.4f} < {old}'s {promoted:.4f} on the {n} frames both scored; {old} stays "
        f"promoted (`steel-defect labels promote --db {db} VERSION` to use this one anyway)"
    )


def train_on_labels(
    store: LabelStore,
    images: str | Path | None = None,
    recipe: str = "real",
    opts: list[str] | None = None,
    unlabelled: str | Path | None = None,
    work_dir: str | Path | None = None,
    training_id: int | None = None,
    epochs: int | None = None,
    seed: int = 0,
    echo=None,
) -> dict:
    """Train ``recipe`` on the labelled frames of ``store``, record the version, promote it when
    it is at least as good out of fold on the same frames; returns what was recorded and decided.

    ``images``: the frames' folder (default: the one the database records). ``opts``: overrides
    of the recipe's segmenter config (``epochs``: of every config). ``unlabelled``: frames the
    distilled student also learns the ensemble's maps on. ``training_id``: the training's row,
    which follows each epoch and ends ``done`` (with the version), ``failed`` or ``cancelled``.
    ``echo``: called with a line per progress step.
    """
    try:
        return _train(store, images, recipe, opts, unlabelled, work_dir, training_id, epochs, seed, echo)
    except BaseException as err:
        if training_id is not None:
            cancelled = isinstance(err, (KeyboardInterrupt, SystemExit))
            state, text = ("cancelled", None) if cancelled else ("failed", f"{type(err).__name__}: {err}")
            store.finish_training(training_id, state, error=text)
        raise


def _train(store, images, recipe, opts, unlabelled, work_dir, training_id, epochs, seed, echo) -> dict:
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    steps = RECIPES[recipe]
    start = time.perf_counter()
    images = images_dir(store, images)
    labelled = list(store.confirmed())
    digest = labels_digest_of(labelled)
    work = Path(work_dir) if work_dir is not None else default_work_dir(store, digest)
    data = DemoData(work / "train.csv", images, images)
    seg_cfg, cls_cfg, _ = load_configs(steps, data, work, seed, epochs, opts)
    folds = seg_cfg.folds.n_splits
    labelled = snapshot(store, images, folds)
    digest, counts = labels_digest_of(labelled), counts_of(labelled)
    progress = Progress(store, training_id, seg_cfg, cls_cfg, folds, steps.distill, echo)
    progress({"stage": "split"})
    work.mkdir(parents=True, exist_ok=True)
    write_annotations(data.train_csv, [n for n, _ in labelled], [m for _, m in labelled])
    split_folds(seg_cfg)
    timings: dict = {}
    _, search = train_round(seg_cfg, cls_cfg, range(folds), work, timings, progress=progress)
    spec = layout.postprocessing(work).resolve()
    line = None
    if steps.distill:
        first = {"student": 0, "students": folds + 1, "epoch": 0, "epochs": progress.student_epochs}
        progress({"stage": "distill", **first})
        t0 = time.perf_counter()
        line = distill(seg_cfg, spec, work / "line", unlabelled, progress=_students_to(progress))
        timings["distill_s"] = round(time.perf_counter() - t0, 1)
    progress({"stage": "record"})
    oof = search["out_of_fold"]
    current = store.promoted()
    comparison = None if current is None else compare(spec, current)
    promote, reason = decide(comparison, store.path)
    seconds = time.perf_counter() - start
    detail = {
        "work_dir": str(work.resolve()),
        "folds": folds,
        "epochs": seg_cfg.train.epochs,
        "opts": list(opts or []),
        "comparison": comparison,
        "decision": reason,
        "timings": timings,
    }
    if line is not None:
        detail["line_out_of_fold"] = line["out_of_fold"]
    line_spec = None if line is None else str(Path(line["postprocessing"]).resolve())
    name = store.record_version(
        recipe=recipe,
        labels_digest=digest,
        counts=counts,
        out_of_fold=oof,
        spec=str(spec),
        seconds=seconds,
        line_spec=line_spec,
        detail=detail,
        promote_reason=reason if promote else None,
        training_id=training_id,
    )
    log.info("recorded %s (%s): %s", name, "promoted" if promote else "not promoted", reason)
    return {
        "version": name,
        "promoted": promote,
        "reason": reason,
        "comparison": comparison,
        "counts": counts,
        "out_of_fold": oof,
        "unlearnt": oof.get("unlearnt", {}),
        "spec": str(spec),
        "line_spec": line_spec,
        "line_out_of_fold": None if line is None else line["out_of_fold"],
        "seconds": round(seconds, 1),
        "work_dir": str(work.resolve()),
    }


def _students_to(progress):
    def report(student, students, epoch, epochs):
        event = {"student": student, "students": students, "epoch": epoch, "epochs": epochs}
        progress({"stage": "distill", **event})

    return report


def claim_training(store: LabelStore, training_id: int | None) -> int:
    """The trainings row this run reports to: ``training_id`` (the page made it; it must be
    running), else a new one. A row left ``running`` by a process of this host that is gone (a
    kill -9, a power cut) is ended as ``failed`` first, so it does not block every later training."""
    if training_id is not None:
        row = store.training(training_id)
        if row is None or row["state"] != "running":
            state = "no such training" if row is None else f"it is {row['state']}"
            raise UserError(
                f"--training-id {training_id}: {state} in {store.path}; start a training without it"
            )
        return training_id
    try:
        return store.start_training(os.getpid(), socket.gethostname(), None)
    except TrainingRunning as err:
        row = err.training
        if row["host"] != socket.gethostname() or row["pid"] is None or _alive(row["pid"]):
            raise
        store.finish_training(row["id"], "failed", error=f"its process {row['pid']} ended without a word")
        return store.start_training(os.getpid(), socket.gethostname(), None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dice_row(oof: dict) -> str:
    classes = " ".join(
        f"{c}:{oof['per_class'][str(c)]:.4f}/{oof['empty_per_class'][str(c)]:.4f}" for c in CLASS_IDS
    )
    return f"{oof['mean_dice']:.4f} vs {oof['empty']:.4f} empty (class model/empty {classes})"


def result_text(result: dict) -> str:
    """What ``labels train`` prints last: the version, its Dice, the classes not learnt, the decision."""
    counts, oof = result["counts"], result["out_of_fold"]
    lines = [
        f"{result['version']}: {counts['frames']} labelled frames ({counts['defect_free']} defect-free; "
        f"per class {' '.join(f'{c}:{n}' for c, n in counts['per_class'].items())}), "
        f"{result['seconds']:.0f} s",
        f"out of fold: {_dice_row(oof)}",
    ]
    if result.get("line_out_of_fold"):
        lines.append(f"line pipeline out of fold: {_dice_row(result['line_out_of_fold'])}")
    for c, why in result["unlearnt"].items():
        lines.append(
            f"class {c} not learnt yet: off; out of fold its maps peak at {why['peak_on_defects']:.2f} "
            f"on its {why['defect_images']} frames, under the lowest threshold "
            f"{why['lowest_threshold']:.2f}: label more frames with it"
        )
    decision = "promoted" if result["promoted"] else "not promoted"
    lines.append(f"{decision}: {result['reason']}")
    lines.append(
        f"spec: {result['spec']}" + (f"  line: {result['line_spec']}" if result["line_spec"] else "")
    )
    return "\n".join(lines)


def versions_table(versions: list[dict]) -> str:
    """``labels versions``: one line a version, the promoted one marked ``*``."""
    header = f"  {'name':<6}{'created':<22}{'recipe':<11}{'frames':>7}  {'OOF':>7}{'empty':>8}  per class"
    lines = [header]
    for v in versions:
        oof = v["out_of_fold"]
        classes = " ".join(f"{c}:{d:.3f}" for c, d in oof["per_class"].items())
        lines.append(
            f"{'*' if v['promoted'] else ' '} {v['name']:<6}{v['created_at'][:19]:<22}{v['recipe']:<11}"
            f"{v['counts']['frames']:>7}  {oof['mean_dice']:>7.4f}{oof['empty']:>8.4f}  {classes}"
        )
    lines.append("* promoted: label, labels queue and serve --labels-db use it (labels promote changes it)")
    return "\n".join(lines)
