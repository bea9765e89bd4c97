"""Out-of-fold threshold search: each fold's validation images, predicted by that fold's models.

``steel-defect thresholds --config SEG_CFG [--cls-config CLS_CFG]`` finds
``<work_dir>/fold<K>/checkpoints/best.pth`` for every trained fold, predicts the images of
fold K with fold K's segmenter (and classifier), keeps the probability maps as uint8 at
``inference.search_downsample`` times smaller per side (a 256x1600 frame costs 4 x 64 x 400
bytes at the default 4), searches the per-class parameters and writes them as YAML for
inference (``paths.postprocessing``, default ``<work_dir>/postprocessing.yml``).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from steel_defect.atomic import atomic_write
from steel_defect.config import layout
from steel_defect.config.layout import trained_folds
from steel_defect.constants import CLASS_IDS
from steel_defect.data.annotations import read_annotations
from steel_defect.data.folds import read_folds, split_ids
from steel_defect.data.images import read_image
from steel_defect.data.rle import rles_to_masks
from steel_defect.inference.predictor import Predictor
from steel_defect.inference.search import downsample_mask, downsample_probs, search_all
from steel_defect.models.checkpoint import update_checkpoint

log = logging.getLogger(__name__)


def _member_folds(seg_cfg, members, seg_folds: dict[int, Path]) -> list[dict[int, Path]]:
    """Trained folds of each ensemble member; they must share the main config's split and folds."""
    found = []
    split = Path(seg_cfg.paths.folds_csv).read_bytes()
    for member in members:
        if Path(member.paths.folds_csv).read_bytes() != split:
            raise ValueError(
                f"ensemble member {member.paths.work_dir} uses the split {member.paths.folds_csv}, "
                f"which differs from {seg_cfg.paths.folds_csv}; out-of-fold maps of different splits "
                "cannot be averaged (give every member the same paths.folds_csv)"
            )
        folds = trained_folds(member.paths.work_dir)
        missing = sorted(set(seg_folds) - set(folds))
        if missing:
            raise FileNotFoundError(
                f"ensemble member {member.paths.work_dir} has no trained fold(s) {missing} "
                f"(expected fold<K>/checkpoints/best.pth); train them or leave the member out"
            )
        found.append(folds)
    return found


def collect_oof(seg_cfg, cls_cfg=None, device: str = "cpu", members=()) -> dict:
    """Compact out-of-fold predictions of every trained fold.

    ``members``: further segmenter configs trained on the same split; fold K's maps are the
    average of every config's fold-K model, as the ensemble will predict at inference.

    Returns ``{"ids": [...], "probs": uint8 (N, 4, h, w), "truth": bool (N, 4, h, w),
    "cls": float (N, 4) or None, "top": float (N, 4) maximum of each full-resolution map,
    "folds": [...], "factor": int}``.
    """
    seg_folds = trained_folds(seg_cfg.paths.work_dir)
    if not seg_folds:
        raise FileNotFoundError(
            f"no trained fold under {seg_cfg.paths.work_dir} (expected fold<K>/checkpoints/best.pth); "
            "run train.py first"
        )
    member_folds = _member_folds(seg_cfg, members, seg_folds)
    cls_folds = trained_folds(cls_cfg.paths.work_dir) if cls_cfg is not None else {}
    factor = seg_cfg.inference.search_downsample
    annotations = read_annotations(seg_cfg.paths.train_csv)
    folds = read_folds(seg_cfg.paths.folds_csv)
    images_dir = Path(seg_cfg.paths.train_images)
    ids, probs, truth, cls_probs, top = [], [], [], [], []
    use_cls = bool(cls_folds) and all(k in cls_folds for k in seg_folds)
    if cls_folds and not use_cls:
        log.warning(
            "classifier folds %s do not cover segmenter folds %s: searching without gates",
            sorted(cls_folds),
            sorted(seg_folds),
        )
    for fold, seg_path in seg_folds.items():
        checkpoints = [seg_path, *(folds[fold] for folds in member_folds)]
        checkpoints += [cls_folds[fold]] if use_cls else []
        predictor = Predictor(
            checkpoints,
            tta=tuple(seg_cfg.inference.tta),
            device=device,
            backend=seg_cfg.inference.backend,
            threads=seg_cfg.inference.threads,
        )
        _, valid_ids = split_ids(folds, fold)
        log.info("fold %d: predicting %d validation images with %s", fold, len(valid_ids), seg_path)
        batch = seg_cfg.inference.batch_size
        for start in range(0, len(valid_ids), batch):
            chunk = valid_ids[start : start + batch]
            images = [read_image(images_dir / image_id) for image_id in chunk]
            seg, heads = predictor.segment_with_heads(images)
            if use_cls:
                cls_probs.extend(predictor.classify(images))
            elif heads is not None:  # a two-head segmenter: its head is the gate to tune
                cls_probs.extend(heads)
            for image_id, p in zip(chunk, seg, strict=True):
                ids.append(image_id)
                probs.append(downsample_probs(p, factor))
                top.append(p.max(axis=(1, 2)))  # before block averaging lowers it
                truth.append(downsample_mask(rles_to_masks(annotations.rles(image_id)), factor))
    return {
        "ids": ids,
        "probs": np.stack(probs),
        "truth": np.stack(truth),
        "cls": np.stack(cls_probs) if cls_probs else None,
        "top": np.stack(top),
        "folds": sorted(seg_folds),
        "factor": factor,
        "checkpoints": [str(p) for p in seg_folds.values()]
        + [str(folds[k]) for folds in member_folds for k in seg_folds]
        + ([str(cls_folds[k]) for k in seg_folds] if use_cls else []),
    }


def write_oof_scores(path: Path, oof: dict) -> Path:
    """Per image: its fold, the segmenter's peak probability per class and the classifier's (or
    the head's) probability per class, empty without one. ``data.sampler: hard_negatives`` ranks
    defect-free images by it."""
    columns = ["ImageId", *(f"peak_{c}" for c in CLASS_IDS), *(f"cls_{c}" for c in CLASS_IDS)]
    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for k, image_id in enumerate(oof["ids"]):
            cls = [f"{p:.5f}" for p in oof["cls"][k]] if oof["cls"] is not None else [""] * len(CLASS_IDS)
            writer.writerow([image_id, *(f"{p:.5f}" for p in oof["top"][k]), *cls])
    return path


def out_of_fold_score(report: dict, images: int) -> dict:
    """Mean and per-class OOF Dice with the searched parameters, beside all-empty masks.

    A class the search switched off predicts nothing, so it scores what empty masks score.
    """
    per_class = {
        str(c): r["empty_dice"] if r["disabled"] else r["best_dice"] for c, r in report["classes"].items()
    }
    empty = {str(c): r["empty_dice"] for c, r in report["classes"].items()}
    return {
        "mean_dice": sum(per_class.values()) / len(per_class),
        "empty": sum(empty.values()) / len(empty),
        "images": images,
        "per_class": per_class,
        "empty_per_class": empty,
    }


def search_thresholds(
    seg_cfg, cls_cfg=None, out: str | Path | None = None, device: str = "cpu", members=(), record=True
) -> dict:
    """Collect OOF predictions, search per-class parameters, write YAML + JSON report.

    ``members``: further segmenter configs of an ensemble (see :func:`collect_oof`).
    ``record``: write the OOF score into the checkpoints (False for what-if searches).
    """
    oof = collect_oof(seg_cfg, cls_cfg, device, members)
    top = oof["top"] if seg_cfg.inference.search_top_threshold else None
    params, report = search_all(oof["probs"], oof["truth"], oof["cls"], scale=oof["factor"], top_probs=top)
    out = Path(out or seg_cfg.paths.postprocessing or layout.postprocessing(seg_cfg.paths.work_dir))
    params.save(out)
    summary = {
        "postprocessing": str(out),
        "images": len(oof["ids"]),
        "folds": oof["folds"],
        "gated": oof["cls"] is not None,
        "top_threshold_searched": top is not None,
        "mean": report["mean"],
        "classes": {str(c): {k: v for k, v in r.items()} for c, r in report["classes"].items()},
    }
    summary["out_of_fold"] = out_of_fold_score(report, len(oof["ids"]))
    # the file alone also says which checkpoints earned the score (`steel-defect runs`) and how
    # Dice moves around the chosen point (`steel-defect report --search-report`)
    extra = {"checkpoints": oof["checkpoints"], "curves": {str(c): v for c, v in report["curves"].items()}}
    with atomic_write(layout.search_report(out)) as handle:
        json.dump({**summary, **extra}, handle, indent=2, default=str)
    summary["scores"] = str(write_oof_scores(layout.oof_scores(out), oof))
    # the models carry the score their thresholds earned, for the web page and for whoever
    # finds the checkpoint later without its report
    for path in oof["checkpoints"] if record else []:
        update_checkpoint(path, out_of_fold=summary["out_of_fold"])
    return summary
