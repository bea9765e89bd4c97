"""``steel-defect export``: checkpoints -> a folder of ONNX files, the int8 twins of each (ONNX
Runtime's ``X.int8.onnx`` and, with openvino and nncf installed, OpenVINO's ``X.int8.xml``)
checked against fp32 on frames the model did not train on, inside the tuned pipeline.

    export_all(checkpoints, "export/", cfg, postprocessing="work/postprocessing.json", int8=True)

The conversion itself (graph, metadata, quantization) is :mod:`.onnx_export` and, for
OpenVINO's int8, :mod:`.openvino_export`.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path

import numpy as np

from steel_defect.errors import UserError
from steel_defect.inference.onnx_export import (
    export_onnx,
    quantize_int8,
    read_export_metadata,
    set_int8_report,
)
from steel_defect.inference.openvino_export import quantize_openvino_int8, set_openvino_int8_report
from steel_defect.inference.pipeline import UNTUNED_HINT, PipelineError, read_tuned
from steel_defect.inference.postprocess import PostProcessing
from steel_defect.inference.predictor import Predictor

__all__ = ["INT8_MAX_DICE_LOSS", "export_all", "export_onnx", "int8_frame_ids", "quantize_int8"]

INT8_MAX_DICE_LOSS = 0.005


def export_name(checkpoint: Path, taken: set[str]) -> str:
    """``fold0/checkpoints/best.pth`` -> ``fold0_best``; unique within one export."""
    stem = checkpoint.stem
    if checkpoint.parent.name == "checkpoints":
        stem = f"{checkpoint.parent.parent.name}_{stem}"
    name, index = stem, 1
    while name in taken:
        index += 1
        name = f"{stem}_{index}"
    taken.add(name)
    return name


def int8_frame_ids(cfg, trained_on: dict | None, source: str, n_calib: int, n_holdout: int, seed: int = 0):
    """(calibration ids, held-out ids) for a model's int8 check.

    The held-out frames are the validation frames its checkpoint records
    (``trained_on.split.valid_ids``): frames the model never learnt from, whatever split file
    is around now. Calibration frames are other frames of ``paths.train_csv``. A model that does
    not record its validation frames is refused (ValueError): scoring it on frames it may have
    learnt from would make the check meaningless.
    """
    from steel_defect.data.annotations import read_annotations, resolve_image_ids

    valid = ((trained_on or {}).get("split") or {}).get("valid_ids")
    if not valid:
        raise UserError(
            f"{source} does not record its validation frames (trained before checkpoints recorded "
            "the split): the int8 check cannot tell which frames it never learnt from; retrain it, "
            "or export without --int8"
        )
    annotations = read_annotations(cfg.paths.train_csv)
    known = set(resolve_image_ids(annotations, cfg.paths.train_images))
    holdout = [i for i in valid if i in known][:n_holdout]
    rng = np.random.default_rng(seed)
    others = sorted(known - set(valid))
    calib = [str(i) for i in rng.permutation(others)[:n_calib]] if others else []
    if not calib or not holdout:
        raise UserError(
            f"{cfg.paths.train_csv}: {len(holdout)} of {source}'s validation frames and {len(calib)} "
            f"other frames found; the int8 check needs at least one of each"
        )
    return calib, holdout


def read_frames(cfg, ids: list[str]):
    """(uint8 RGB frames, truth masks (N, 4, H, W)) of ``ids`` in ``paths.train_images``."""
    from steel_defect.data.annotations import read_annotations
    from steel_defect.data.images import read_image
    from steel_defect.data.rle import rles_to_masks

    annotations = read_annotations(cfg.paths.train_csv)
    images = Path(cfg.paths.train_images)
    frames = [read_image(images / i, channels=3) for i in ids]
    return frames, np.stack([rles_to_masks(annotations.rles(i)) for i in ids])


def mean_dice(models: list[Path], frames, truth, post, tta=(), batch: int = 4) -> float:
    """Mean Dice of the pipeline of ``models`` (``.onnx`` on ONNX Runtime, ``.pth`` on torch)."""
    from steel_defect.evaluation.metric import dice_pairs

    predictor = Predictor(models, post, tta=tuple(tta), backend="torch")
    masks = [
        p.masks
        for start in range(0, len(frames), batch)
        for p in predictor.predict(frames[start : start + batch])
    ]
    return float(dice_pairs(np.stack(masks), truth).mean())


def _check_pipeline(checkpoint: Path, digest: str, spec):
    """(the other models of ``checkpoint``'s fold in the tuned pipeline, post-processing, TTA):
    the int8 model is scored inside the pipeline it will run in, gate included. ``digest``: the
    checkpoint's weights SHA-256."""
    if spec is None:  # --untuned: the model alone, threshold 0.5
        return [], PostProcessing(), ()
    mine = [m for m in spec.models if m.weights_sha256 == digest]
    if not mine:
        raise UserError(f"{checkpoint} is not a model of the tuned pipeline {spec.source}")
    others = [m.path for m in spec.of_fold(mine[0].fold) if m.weights_sha256 != digest]
    return others, spec.post, spec.tta


def _int8_twin(fp32: Path, name: str, backend: str, calib, check: dict, scoring, force: bool) -> dict:
    """Quantise ``fp32`` for ``backend`` (ONNX Runtime QDQ, or an OpenVINO IR through NNCF),
    score it inside the pipeline ``scoring`` (other models, held-out frames, truth, post-processing,
    TTA) against ``check["dice_fp32"]``, and move it beside ``fp32`` unless it loses too much."""
    others, holdout, truth, post, tta = scoring
    suffix = ".int8.onnx" if backend == "onnx" else ".int8.xml"
    with tempfile.TemporaryDirectory(dir=fp32.parent) as tmp:
        if backend == "onnx":
            candidate = quantize_int8(fp32, Path(tmp) / "int8.onnx", calib)
        else:
            candidate = quantize_openvino_int8(fp32, Path(tmp) / "int8.xml", calib)
        dice_int8 = mean_dice([candidate, *others], holdout, truth, post, tta)
        report = {**check, "dice_int8": dice_int8, "dice_change": dice_int8 - check["dice_fp32"]}
        loses = report["dice_change"] < -INT8_MAX_DICE_LOSS
        target = fp32.with_name(f"{name}{suffix}")
        if loses and not force:
            report["refused"] = (
                f"{backend} int8 loses {-report['dice_change']:.4f} mean Dice on {len(holdout)} held-out "
                f"frames (> {INT8_MAX_DICE_LOSS}); pass --force to write it anyway"
            )
        elif backend == "onnx":
            set_int8_report(candidate, report)
            candidate.replace(target)
            report["onnx"] = str(target)
        else:
            report["xml"] = str(set_openvino_int8_report(candidate, report, out=target))
    return report


def _quantise(fp32: Path, out: Path, backend: str, calib) -> Path:
    if backend == "onnx":
        return quantize_int8(fp32, out.with_suffix(".onnx"), calib)
    return quantize_openvino_int8(fp32, out.with_suffix(".xml"), calib)


def _distilled_int8(
    checkpoint: Path, fp32: Path, name: str, cfg, spec, backends, force: bool, n_holdout: int
):
    """The int8 check of a shipped distilled student, which learnt every labelled frame, so no
    frame is left to score it on: the out-of-fold students of its distillation (the same
    network and recipe, ``distill.json``) are quantised as it will be, each scored on the fold
    it never saw inside the student's tuned post-processing, and their pooled Dice change
    decides whether the shipped student's int8 twin is written."""
    record = checkpoint.parents[2] / "distill.json"
    if not record.is_file():
        raise UserError(
            f"{checkpoint} is a distilled student that learnt every labelled frame and {record} is "
            "missing: the int8 check scores its out-of-fold students, which that file lists"
        )
    folds = json.loads(record.read_text())["folds"]
    post, tta = (spec.post, spec.tta) if spec is not None else (PostProcessing(), ())
    pooled = {b: {"frames": 0, "fp32": 0.0, "int8": 0.0} for b in backends}
    from steel_defect.data.annotations import read_annotations

    labelled = set(read_annotations(cfg.paths.train_csv).image_ids)
    with tempfile.TemporaryDirectory(dir=fp32.parent) as tmp:
        for k, fold in sorted(folds.items()):
            scored = [i for i in fold["scored"] if i in labelled][:n_holdout]
            calib_ids = [i for i in fold["learnt_from"] if i in labelled][:16]
            if not scored or not calib_ids:
                raise UserError(f"{record}: fold {k}'s frames are not in {cfg.paths.train_csv}")
            holdout, truth = read_frames(cfg, scored)
            calib, _ = read_frames(cfg, calib_ids)
            oof = export_onnx(fold["student"], Path(tmp) / f"fold{k}.onnx")
            dice_fp32 = mean_dice([oof], holdout, truth, post, tta)
            for backend in backends:
                int8 = _quantise(oof, Path(tmp) / f"fold{k}_{backend}.int8", backend, calib)
                total = pooled[backend]
                total["frames"] += len(holdout)
                total["fp32"] += dice_fp32 * len(holdout)
                total["int8"] += mean_dice([int8], holdout, truth, post, tta) * len(holdout)
        # the shipped student is calibrated on labelled frames, which it learnt from like any
        # other: calibration only sets the activations' ranges
        calib, _ = read_frames(cfg, sorted(labelled)[:16])
        out = {}
        for backend in backends:
            total = pooled[backend]
            report = {
                "checked_on": "the out-of-fold students, each on the fold it never saw",
                "holdout_frames": total["frames"],
                "dice_fp32": total["fp32"] / total["frames"],
                "dice_int8": total["int8"] / total["frames"],
            }
            report["dice_change"] = report["dice_int8"] - report["dice_fp32"]
            if report["dice_change"] < -INT8_MAX_DICE_LOSS and not force:
                report["refused"] = (
                    f"{backend} int8 loses {-report['dice_change']:.4f} mean Dice on {total['frames']} "
                    f"frames scored by the out-of-fold students (> {INT8_MAX_DICE_LOSS}); pass --force "
                    "to write it anyway"
                )
            elif backend == "onnx":
                candidate = _quantise(fp32, Path(tmp) / "shipped.int8", backend, calib)
                set_int8_report(candidate, report)
                target = fp32.with_name(f"{name}.int8.onnx")
                candidate.replace(target)
                report["onnx"] = str(target)
            else:
                candidate = _quantise(fp32, Path(tmp) / "shipped.int8", backend, calib)
                target = fp32.with_name(f"{name}.int8.xml")
                report["xml"] = str(set_openvino_int8_report(candidate, report, out=target))
            out[backend] = report
    entry = out["onnx"]
    if "openvino" in out:
        entry["openvino"] = out["openvino"]
        if "refused" in out["openvino"] and "refused" not in entry:
            entry["refused"] = f"openvino: {out['openvino']['refused']}"
    return entry


def export_all(
    checkpoints,
    out_dir,
    cfg=None,
    postprocessing=None,
    untuned=False,
    int8=False,
    n_calib=16,
    n_holdout=16,
    force=False,
    openvino=None,
):
    """Export every checkpoint to ``out_dir`` (and its int8 twin); a list of per-file summaries.

    ``postprocessing``: the tuned pipeline (:mod:`.pipeline`); ``checkpoints`` default to its
    models. The int8 check scores each model on the validation frames its checkpoint records,
    inside its fold's share of the tuned pipeline (same gate, TTA and thresholds), fp32 against
    int8; without a pipeline it needs ``untuned`` and scores the model alone at threshold 0.5.
    An int8 model that loses more than ``INT8_MAX_DICE_LOSS`` mean Dice is not written unless
    ``force``; the fp32 file is written either way. ``openvino`` (default: when openvino and nncf
    are installed): also write the OpenVINO int8 IR ``<name>.int8.xml`` (NNCF, the same
    calibration frames), checked the same way; its report is ``int8.openvino`` of the summary.
    """
    spec = read_tuned(postprocessing)[1] if postprocessing is not None else None
    if int8 and spec is None and not untuned:
        raise PipelineError(f"the int8 check runs the tuned pipeline: {UNTUNED_HINT}")
    checkpoints = checkpoints or (spec.checkpoints if spec else None)
    if not checkpoints:
        raise PipelineError("nothing to export: pass --checkpoints or --postprocessing (a tuned pipeline)")
    out_dir, taken, summary = Path(out_dir), set(), []
    for checkpoint in map(Path, checkpoints):
        name = export_name(checkpoint, taken)
        fp32 = export_onnx(checkpoint, out_dir / f"{name}.onnx")
        meta = read_export_metadata(fp32)
        entry = {
            "checkpoint": str(checkpoint),
            "onnx": str(fp32),
            **{k: meta[k] for k in ("source_sha256", "max_abs_diff_vs_torch")},
        }
        summary.append(entry)
        if not int8:
            continue
        if openvino is None:
            openvino = all(importlib.util.find_spec(p) is not None for p in ("openvino", "nncf"))
        trained_on = meta.get("trained_on") or {}
        if trained_on.get("distilled_from") and not (trained_on.get("split") or {}).get("valid_ids"):
            backends = ("onnx", "openvino") if openvino else ("onnx",)
            try:
                entry["int8"] = _distilled_int8(
                    checkpoint, fp32, name, cfg, None if untuned else spec, backends, force, n_holdout
                )
            except UserError as err:
                entry["int8"] = {"refused": str(err)}
            continue
        try:
            calib_ids, holdout_ids = int8_frame_ids(
                cfg, meta.get("trained_on"), str(checkpoint), n_calib, n_holdout
            )
        except UserError as err:
            entry["int8"] = {"refused": str(err)}
            continue
        others, post, tta = _check_pipeline(checkpoint, meta["weights_sha256"], None if untuned else spec)
        calib, _ = read_frames(cfg, calib_ids)
        holdout, truth = read_frames(cfg, holdout_ids)
        check = {
            "holdout_frames": len(holdout),
            "holdout_ids": holdout_ids,
            "pipeline": [str(p) for p in others],
            "dice_fp32": mean_dice([fp32, *others], holdout, truth, post, tta),
        }
        entry["int8"] = _int8_twin(
            fp32, name, "onnx", calib, check, (others, holdout, truth, post, tta), force
        )
        if openvino:
            ov = _int8_twin(fp32, name, "openvino", calib, check, (others, holdout, truth, post, tta), force)
            entry["int8"]["openvino"] = ov
            if "refused" in ov and "refused" not in entry["int8"]:  # the command's exit status says so
                entry["int8"]["refused"] = f"openvino: {ov['refused']}"
    return summary
