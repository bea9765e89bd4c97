"""``distill``: the tuned ensemble's maps teach one student, whose thresholds are tuned out of fold.

    summary = distill(cfg, "work/real/postprocessing.yml", "work/real/line")

**The honest scheme.** The teacher is a tuned pipeline of fold models: fold K's segmenters never
saw fold K's frames. The whole ensemble saw every frame (each frame trained all folds' models but
one), so no map it draws is out of fold for a student scored on those frames. Hence:

* out-of-fold student K learns from the frames outside fold K (the unlabelled ones too), with the
  maps of fold K's teacher alone, and with the labels of those frames; it then scores fold K.
  Neither it nor its teacher saw fold K, so the thresholds searched on the students' maps of
  their own folds are tuned out of fold, as the ensemble's are;
* the shipped student learns from every frame with the whole ensemble's maps (the better
  teacher, and every label), and takes those thresholds: the students that earned them were
  trained by the same procedure on (K-1)/K of the frames, as each fold model of the ensemble
  stands for the ensemble whose thresholds it tuned. Every student trains for the same epochs
  and ships its last one: the shipped student has no held-out frames to pick an epoch on, so
  the out-of-fold ones do not pick either.

**Two sets of thresholds** (``distill.thresholds``). ``students``, above, tunes them on the
out-of-fold students. ``teacher`` takes the teacher's own, which it tuned out of fold on its fold
models: the shipped student learnt to draw the whole ensemble's maps, so the thresholds that suit
those maps suit it, as they suit the ensemble that each fold model stood for. Neither saw a frame
it is scored on. The out-of-fold students still train under ``teacher``: the clean-frame gate is
tuned on their coarse peaks, and their out-of-fold Dice under the teacher's thresholds is the
one reported. The other scheme's pipeline is written beside the chosen one
(``postprocessing.<scheme>.yml``), and ``demo`` scores both on its test frames.

What each student learnt from and which frames it scored is recorded (``distill.json``, and
``trained_on`` in every checkpoint); the threshold search checks each out-of-fold student
against the split as it checks any fold model. ``K + 1`` students train in all.

Writes, under ``out_dir``::

    teacher_maps/<key>/...          the teacher's maps (``distill.cache_dir``; :mod:`.teacher`)
    oof/fold<K>/checkpoints/last.pth  out-of-fold student K
    student/checkpoints/last.pth    the shipped student
    postprocessing.yml              its tuned pipeline (+ .report.json, .oof.csv)
    postprocessing.<scheme>.yml     the same student with the other scheme's thresholds
    distill.json                    the scheme as it ran: folds, frames, teachers, students, and
                                    how closely the shipped student follows its teacher (:mod:`.fit`)
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

from steel_defect.atomic import atomic_write
from steel_defect.config import layout
from steel_defect.config.layout import RunPaths, trained_folds
from steel_defect.constants import CLASS_IDS
from steel_defect.data.annotations import read_annotations
from steel_defect.data.folds import read_folds, split_digest
from steel_defect.data.images import IMAGE_SUFFIXES
from steel_defect.data.synth import images_source
from steel_defect.data.transforms import build_transforms
from steel_defect.distill.fit import fit_report
from steel_defect.distill.student import DistillFrames, student_config, student_shape, train_student
from steel_defect.distill.teacher import Teacher, compute_maps, frame, teachers
from steel_defect.errors import UserError
from steel_defect.inference.oof import (
    collect_oof,
    pair_dice,
    search_collected,
    tune_clean_gate,
    unlearnt_classes,
    write_oof_scores,
)
from steel_defect.inference.pipeline import PipelineError, build_predictor, read_tuned, save_spec
from steel_defect.inference.postprocess import PostProcessing
from steel_defect.inference.predictor import load_network
from steel_defect.inference.search import DEFAULT_THRESHOLDS, class_signal
from steel_defect.models.checkpoint import read_entry, update_checkpoint
from steel_defect.training.runner import training_data

log = logging.getLogger(__name__)


def unlabelled_frames(folder: str | Path | None, labelled: set[str]) -> list[Path]:
    """The image files of ``folder`` less any named in the fold split (a labelled frame's real
    label wins, and a scored frame must not reach a student's training by another door)."""
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"unlabelled frames: {folder} is not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    kept = [p for p in paths if p.name not in labelled]
    if len(kept) < len(paths):
        log.info("distill: left out %d unlabelled frames that the fold split labels", len(paths) - len(kept))
    return kept


def _teacher_record(teacher: Teacher) -> list[dict]:
    """Each model of ``teacher``: path, weights, and the frames it never learnt from."""
    out = []
    for m in teacher.models:
        split = ((read_entry(m.path, "trained_on") or {}).get("split")) or {}
        out.append(
            {
                "path": str(m.path),
                "weights_sha256": m.weights_sha256,
                "fold": m.fold,
                "valid_ids": split.get("valid_ids"),
            }
        )
    return out


def _frames_of(student_cfg, items, teacher: Teacher, cache: Path, annotations, side: str) -> DistillFrames:
    transforms = build_transforms(student_cfg.transforms[side], f"transforms.{side}", seed=student_cfg.seed)
    return DistillFrames(
        items,
        [teacher.map_path(cache, f) for f in items],
        annotations,
        transforms,
        student_cfg.data.channels,
        uint8=bool(student_cfg.data.normalize_on_device),
    )


def _parts(student_cfg, items, teacher, cache, annotations) -> list[DistillFrames]:
    """The labelled and (when there are any) the unlabelled frames, sharing one transform pipeline."""
    train = _frames_of(student_cfg, [f for f in items if f.labelled], teacher, cache, annotations, "train")
    rest = [f for f in items if not f.labelled]
    if not rest:
        return [train]
    return [
        train,
        DistillFrames(
            rest,
            [teacher.map_path(cache, f) for f in rest],
            annotations,
            train.transforms,
            train.channels,
            train.uint8,
        ),
    ]


# distill.thresholds: where the shipped student's thresholds come from, in words
THRESHOLDS = {"students": "the out-of-fold students' thresholds", "teacher": "the teacher's thresholds"}


def teacher_thresholds(post: PostProcessing, source, required: bool) -> PostProcessing | None:
    """The teacher's tuned post-processing, for its student: None where a class is gated on a
    classifier, which a student has none of (a :class:`UserError` when ``required``, i.e.
    ``distill.thresholds: teacher``)."""
    gated = [c for c, p in zip(CLASS_IDS, post.classes, strict=True) if p.cls_threshold is not None]
    if gated and required:
        raise UserError(
            f"{source} gates class(es) {gated} on a classifier (cls_threshold), which the student has "
            "none of: distill with distill.thresholds: students"
        )
    return None if gated else post


def scheme_score(oof: dict, post: PostProcessing) -> dict:
    """The out-of-fold Dice of ``post`` on the out-of-fold students' maps of their own folds,
    beside empty masks (the shape of :func:`out_of_fold_score`)."""
    dice, empty = pair_dice(oof, post)
    per_class = {str(c): float(dice[:, i].mean()) for i, c in enumerate(CLASS_IDS)}
    empty_per_class = {str(c): float(empty[:, i].mean()) for i, c in enumerate(CLASS_IDS)}
    return {
        "mean_dice": float(dice.mean()),
        "empty": float(empty.mean()),
        "images": len(dice),
        "per_class": per_class,
        "empty_per_class": empty_per_class,
    }


def tune(oof_cfg, shipped: Path, out: Path, teacher_post: PostProcessing | None, scheme: str) -> dict:
    """Write the shipped student's tuned pipeline ``out`` with the thresholds of ``scheme`` (and
    the other scheme's beside it, ``postprocessing.<scheme>.yml``); the summary.

    ``students``: searched on the out-of-fold students' maps of their own folds. ``teacher``: the
    teacher's own out-of-fold thresholds (``teacher_post``; None: not available). Either way the
    clean-frame gate is tuned on the out-of-fold students' coarse peaks under those thresholds,
    and the out-of-fold Dice is theirs under them."""
    oof = collect_oof(oof_cfg, None, oof_cfg.inference.device, (), "last")
    params, report = search_collected(oof, oof_cfg)
    candidates = {"students": params}
    if teacher_post is not None:
        candidates["teacher"] = teacher_post
    network = load_network(shipped, "torch")
    tta, folds_csv, split = oof_cfg.inference.tta, oof_cfg.paths.folds_csv, oof["split"]
    classes = {str(c): dict(r) for c, r in report["classes"].items()}
    present = oof["tables"][2] > 0 if oof["tables"] is not None else oof["truth"].any(axis=(2, 3))
    for c, signal in class_signal(oof["top"], present, min(DEFAULT_THRESHOLDS)).items():
        classes[str(c)]["signal"] = signal
    summaries = {}
    for name, post in candidates.items():
        path = out if name == scheme else out.with_suffix(f".{name}.yml")
        try:  # the gate is tuned as the thresholds are scored: on the out-of-fold students' coarse peaks
            gate = tune_clean_gate(oof, post, oof_cfg.inference.gate_max_lost_pairs)
            score = scheme_score(oof, post)
        except ValueError as error:  # a hand-edited value off the search's grids
            if name != scheme:
                log.warning(
                    "distill: the teacher's thresholds are off the search's grids (%s): not written", error
                )
                continue
            raise UserError(
                f"the teacher's thresholds are off the threshold search's grids ({error}): distill with "
                "distill.thresholds: students, or tune the teacher with `steel-defect thresholds`"
            ) from error
        save_spec(
            path, post, [network], tta, oof["gate"], oof["factor"], folds_csv, split, gate and gate.spec
        )
        summary = {
            "postprocessing": str(path),
            "thresholds": name,
            "images": len(oof["ids"]),
            "folds": oof["folds"],
            "out_of_fold": score,
            "clean_gate": gate and gate.report,
        }
        extra = {"checkpoints": oof["checkpoints"]}
        if name == "students":  # the search's own record belongs to the thresholds it searched
            summary.update(mean=report["mean"], classes=classes)
            score["unlearnt"] = unlearnt_classes(classes)
            extra["curves"] = {str(c): v for c, v in report["curves"].items()}
        with atomic_write(layout.search_report(path)) as handle:
            json.dump({**summary, **extra}, handle, indent=2, default=str)
        summary["scores"] = str(write_oof_scores(layout.oof_scores(path), oof, gate, post))
        summaries[name] = summary
    chosen = summaries[scheme]
    update_checkpoint(shipped, out_of_fold=chosen["out_of_fold"])
    chosen["alternatives"] = {name: s for name, s in summaries.items() if name != scheme}
    return chosen


def _student_progress(progress, student: int, students: int):
    """The runner's ``(epoch, epochs)`` report of one student as ``progress``'s, or None."""
    if progress is None:
        return None
    return lambda epoch, epochs: progress(student, students, epoch, epochs)


def distill(
    cfg,
    teacher_spec: str | Path,
    out_dir: str | Path,
    unlabelled: str | Path | None = None,
    progress=None,
) -> dict:
    """Distil the tuned pipeline ``teacher_spec`` into one student (``cfg``'s ``distill:``
    section and paths) under ``out_dir``; returns the summary (also in ``distill.json``).

    ``unlabelled``: a folder of unlabelled frames (default ``distill.unlabelled``). The labelled
    frames are those of the teacher's fold split, in ``paths.train_images`` with the labels of
    ``paths.train_csv``. Every name is checked before anything is written. ``progress``: called
    as ``progress(student, students, epoch, epochs)`` after each student's epoch (the out-of-fold
    students are 0..K-1, the shipped one is K).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    teacher_post, spec = read_tuned(teacher_spec)
    if spec is None:
        raise PipelineError(
            f"{teacher_spec} has no 'pipeline' entry: distil a pipeline that `steel-defect thresholds` tuned"
        )
    scheme = cfg.distill.thresholds
    teacher_post = teacher_thresholds(teacher_post, spec.source, required=scheme == "teacher")
    student = student_config(cfg, out_dir / "oof")
    stale = sorted(set(trained_folds(out_dir / "oof", "last")) - {m.fold for m in spec.models})
    if stale:
        raise UserError(
            f"{out_dir / 'oof'} holds students of fold(s) {stale}, which {spec.source} has no model of "
            "(an earlier distillation from another teacher): remove them or distil into another folder"
        )
    table = read_folds(spec.folds_path) if spec.folds_path else None
    if table is None or split_digest(table) != spec.folds_sha256:
        raise PipelineError(
            f"{spec.source}: the fold split it was tuned on ({spec.folds_path}) is missing or changed since"
        )
    student.paths.folds_csv = str(spec.folds_path)
    shape = student_shape(student)
    ensemble, by_fold = teachers(spec, shape)
    fold_of = dict(zip(table.ImageId.astype(str), table.fold.astype(int), strict=True))
    images = Path(cfg.paths.train_images)
    absent = [i for i in sorted(fold_of) if not (images / i).is_file()]
    if absent:
        raise UserError(
            f"{len(absent)} frame(s) of the fold split {spec.folds_path} are not in paths.train_images "
            f"{images} ({', '.join(absent[:3])}): point paths.train_images at the teacher's frames"
        )
    labelled = [frame(images / image_id, True) for image_id in sorted(fold_of)]
    folder = unlabelled if unlabelled is not None else cfg.distill.unlabelled
    extra = [frame(p, False) for p in unlabelled_frames(folder, set(fold_of))]
    cache = Path(cfg.distill.cache_dir or out_dir / "teacher_maps")
    wanted = list({t.key: t for t in (ensemble, *by_fold.values())}.values())
    device = cfg.inference.device
    backend, threads, batch = cfg.inference.backend, cfg.inference.threads, cfg.inference.batch_size
    t0 = time.perf_counter()
    counts = compute_maps(wanted, labelled + extra, cache, backend, threads, batch, device)
    timings = {"teacher_s": round(time.perf_counter() - t0, 1)}
    annotations = read_annotations(cfg.paths.train_csv)
    digest, split = spec.folds_sha256, {"sha256": spec.folds_sha256}
    record: dict = {"folds": {}}
    t0 = time.perf_counter()
    for k, teacher in by_fold.items():
        fold_cfg = copy.deepcopy(student)
        fold_cfg.folds.valid_fold = k
        learns = [f for f in labelled if fold_of[f.image_id] != k] + extra
        scored = [f for f in labelled if fold_of[f.image_id] == k]
        trained_on = training_data(fold_cfg, k)
        trained_on["distilled_from"] = {"teacher": teacher.key, "unlabelled_frames": len(extra)}
        valid = _frames_of(fold_cfg, scored, teacher, cache, annotations, "valid")
        path = train_student(
            fold_cfg,
            k,
            _parts(fold_cfg, learns, teacher, cache, annotations),
            valid,
            RunPaths.of(student.paths.work_dir, k).run_dir,
            trained_on,
            _student_progress(progress, len(record["folds"]), len(by_fold) + 1),
        )
        record["folds"][str(k)] = {
            "student": str(path),
            "teacher": _teacher_record(teacher),
            "teacher_key": teacher.key,
            "learnt_from": [f.image_id for f in learns],
            "scored": [f.image_id for f in scored],
        }
    timings["oof_students_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    shipped_cfg = copy.deepcopy(student)
    shipped_cfg.paths.work_dir = str(out_dir / "student")
    shipped_cfg.train.max_valid_batches = 1  # no held-out frame: one batch of training frames, a smoke check
    trained_on = {
        "source": images_source(images),
        "train_frames": len(labelled),
        "valid_frames": 0,
        "train_csv": str(cfg.paths.train_csv),
        "fold": None,
        "split": {**split, "valid_ids": []},
        "distilled_from": {"teacher": ensemble.key, "unlabelled_frames": len(extra)},
    }
    valid = _frames_of(shipped_cfg, labelled, ensemble, cache, annotations, "valid")
    shipped = train_student(
        shipped_cfg,
        None,
        _parts(shipped_cfg, labelled + extra, ensemble, cache, annotations),
        valid,
        out_dir / "student",
        trained_on,
        _student_progress(progress, len(by_fold), len(by_fold) + 1),
    )
    timings["student_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    tta = tuple(cfg.distill.tta or ())
    fit = fit_report(shipped, ensemble, labelled + extra, cache, tta, "torch", threads, batch, device)
    timings["fit_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    search = tune(student, shipped, layout.postprocessing(out_dir), teacher_post, scheme)
    timings["search_s"] = round(time.perf_counter() - t0, 1)
    # the one-pipeline checks every command runs, on the spec just written
    predictor = build_predictor(search["postprocessing"], backend=backend, threads=threads, device=device)
    timings["total_s"] = round(time.perf_counter() - start, 1)
    summary = {
        "postprocessing": search["postprocessing"],
        "student": str(shipped),
        "teacher": {
            "postprocessing": str(spec.source),
            "ensemble": ensemble.key,
            **counts,
            "cache": str(cache),
        },
        "shape": list(shape),
        "frames": {"labelled": len(labelled), "unlabelled": len(extra)},
        "split": digest,
        "thresholds": scheme,
        "out_of_fold": search["out_of_fold"],
        "clean_gate": search["clean_gate"],
        "alternatives": {
            name: {key: alt[key] for key in ("postprocessing", "out_of_fold", "clean_gate")}
            for name, alt in search["alternatives"].items()
        },
        "fit": fit,
        "model": predictor.describe(),
        "timings": timings,
        **record,
    }
    with atomic_write(out_dir / "distill.json") as handle:
        json.dump(summary, handle, indent=2)
    per_class = " ".join(f"{c}:{search['out_of_fold']['per_class'][str(c)]:.4f}" for c in CLASS_IDS)
    log.info(
        "distilled %s -> %s, out of fold %.4f (%s)",
        spec.source,
        shipped,
        search["out_of_fold"]["mean_dice"],
        per_class,
    )
    return summary
