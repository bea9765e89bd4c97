"""Out-of-fold threshold search: each fold's validation images, predicted by that fold's models.

``steel-defect thresholds --config SEG_CFG [--cls-config CLS_CFG]`` finds
``<work_dir>/fold<K>/checkpoints/best.pth`` (or ``inference.search_checkpoint``) for every
trained fold, checks that each model was trained with fold K held out of this very split,
predicts the images of fold K with fold K's segmenter (and classifier), reduces each
full-resolution map at once to its area tables (:func:`~.search.area_table`: the post-processed
area and overlap with the truth for every threshold and minimum component size, on the uint8
levels inference thresholds), searches the per-class parameters on them and writes them, with
the pipeline they were tuned on (:mod:`.pipeline`), as YAML for inference
(``paths.postprocessing``, default ``<work_dir>/postprocessing.yml``). The search's Dice is
then exactly inference's. With ``inference.search_downsample`` f > 1 it keeps the maps f times
smaller per side instead, and afterwards predicts the same frames again as inference does and
scores the chosen parameters at full resolution, so the report shows what that costs.

With ``inference.gate_scale`` (default 2) the fold models also run each frame once at that coarse
scale, and the clean-frame gate (:mod:`.gate`) is tuned on those peaks and on the Dice the
searched parameters earn per (frame, class) pair: ``clean_gate`` in the YAML, in the report (the
frames it skips, the Dice it gives up) and per frame in the ``.oof.csv``.
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
from steel_defect.data.folds import read_folds, split_digest, split_ids
from steel_defect.data.images import read_image
from steel_defect.data.rle import rles_to_masks
from steel_defect.errors import UserError
from steel_defect.evaluation.metric import dice_pairs
from steel_defect.inference.gate import TunedGate, classifier_absent, tune_gate
from steel_defect.inference.pipeline import save_spec
from steel_defect.inference.postprocess import PostProcessing, quantise, reduced_size
from steel_defect.inference.predictor import Predictor
from steel_defect.inference.search import (
    DEFAULT_MIN_COMPONENTS,
    DEFAULT_THRESHOLDS,
    area_table,
    class_signal,
    downsample_mask,
    downsample_probs,
    search_all,
    search_tables,
)
from steel_defect.models.checkpoint import update_checkpoint

log = logging.getLogger(__name__)


class SplitMismatchError(UserError):
    """A fold's model was trained on another split than the one the search predicts out of fold."""


def _short(digest) -> str:
    return str(digest)[:12]


def check_split(network, fold: int, digest: str, folds_csv) -> None:
    """Refuse ``network`` unless it was trained with ``fold`` held out of the split ``digest``.

    Otherwise its "out-of-fold" maps would be of frames it learnt from, and the thresholds
    tuned on them would be too optimistic.
    """
    trained_on = network.info.get("trained_on") or {}
    recorded = (trained_on.get("split") or {}).get("sha256")
    if recorded is None:
        raise SplitMismatchError(
            f"{network.path} does not record the split it was trained on (saved by an older version); "
            "retrain it so the search can check that its validation fold is out of fold"
        )
    if recorded != digest:
        raise SplitMismatchError(
            f"{network.path} was trained on the split {_short(recorded)}, but {folds_csv} is the split "
            f"{_short(digest)} (re-split since, or another seed): its fold {fold} frames are not out of "
            "fold for it. Retrain it on this split, or restore the folds.csv it was trained on"
        )
    if trained_on.get("fold") != fold:
        raise SplitMismatchError(
            f"{network.path} was trained with fold {trained_on.get('fold')} held out, not fold {fold}"
        )


def _trained(cfg, name: str, what: str) -> dict[int, Path]:
    folds = trained_folds(cfg.paths.work_dir, name)
    if not folds:
        raise FileNotFoundError(
            f"no trained fold under {cfg.paths.work_dir} for the {what} (expected "
            f"fold<K>/checkpoints/{name}.pth); run train.py first"
        )
    return folds


def fold_models(seg_cfg, cls_cfg=None, members=(), name: str | None = None) -> dict[int, list[Path]]:
    """``{fold: [segmenter, members' segmenters..., classifier]}`` of every trained fold.

    ``name``: which checkpoint of each segmenter fold (default ``inference.search_checkpoint``);
    the classifier's comes from its own config. Every member must have every fold; a classifier
    that does not cover the segmenter's folds is left out with a warning.
    """
    name = name or seg_cfg.inference.search_checkpoint
    seg_folds = _trained(seg_cfg, name, "segmenter")
    models = {fold: [path] for fold, path in seg_folds.items()}
    for member in members:
        folds = _trained(member, name, f"ensemble member {member.paths.work_dir}")
        missing = sorted(set(seg_folds) - set(folds))
        if missing:
            raise FileNotFoundError(
                f"ensemble member {member.paths.work_dir} has no trained fold(s) {missing} "
                f"(expected fold<K>/checkpoints/{name}.pth); train them or leave the member out"
            )
        for fold in models:
            models[fold].append(folds[fold])
    if cls_cfg is not None:
        cls_folds = trained_folds(cls_cfg.paths.work_dir, cls_cfg.inference.search_checkpoint)
        if all(k in cls_folds for k in seg_folds):
            for fold in models:
                models[fold].append(cls_folds[fold])
        else:
            log.warning(
                "classifier folds %s do not cover segmenter folds %s: searching without gates",
                sorted(cls_folds),
                sorted(seg_folds),
            )
    return models


def _fold_predictors(seg_cfg, models: dict[int, list[Path]], device: str, post=None):
    """(fold, predictor, validation ids) per fold, every model checked against the split."""
    table = read_folds(seg_cfg.paths.folds_csv)
    digest = split_digest(table)
    for fold, checkpoints in models.items():
        predictor = Predictor(
            checkpoints,
            post,
            tta=tuple(seg_cfg.inference.tta),
            device=device,
            backend=seg_cfg.inference.backend,
            threads=seg_cfg.inference.threads,
            precision=seg_cfg.inference.precision,
        )
        for network in predictor.segmenters + predictor.classifiers:
            check_split(network, fold, digest, seg_cfg.paths.folds_csv)
        _, valid_ids = split_ids(table, fold)
        yield fold, predictor, valid_ids


def _chunks(seg_cfg, ids):
    images_dir, batch = Path(seg_cfg.paths.train_images), seg_cfg.inference.batch_size
    for start in range(0, len(ids), batch):
        chunk = ids[start : start + batch]
        yield chunk, [read_image(images_dir / image_id) for image_id in chunk]


def collect_oof(seg_cfg, cls_cfg=None, device: str = "cpu", members=(), name: str | None = None) -> dict:
    """Compact out-of-fold predictions of every trained fold.

    ``members``: further segmenter configs trained on the same split; fold K's maps are the
    average of every config's fold-K model, as the ensemble will predict at inference. Every
    model must have been trained with its fold held out of ``paths.folds_csv``
    (:func:`check_split`). ``name``: see :func:`fold_models`.

    With ``inference.search_downsample`` 1 (the default) each full-resolution map is reduced at
    once to its :func:`~.search.area_table` per class, so the search scores exactly what
    inference will; with ``f > 1`` the maps are kept ``f`` times smaller per side.

    Returns ``{"ids": [...], "probs": uint8 (N, 4, h, w) and "truth": bool (N, 4, h, w) (f > 1,
    else None), "tables": (area, inter (N, 4, T, M), truth_area (N, 4)) (f = 1, else None),
    "cls": float (N, 4) or None, "top": float (N, 4) maximum of each full-resolution map,
    "folds": [...], "factor": int, "models": {fold: [paths]}, "networks": [loaded networks],
    "gate": "classifier" | "head" | "none", "split": digest, "gate_scale": int or None,
    "gate_levels": uint8 (N, 4) each class's peak on the coarse pass at gate_scale, or None}``.
    """
    models = fold_models(seg_cfg, cls_cfg, members, name)
    factor = seg_cfg.inference.search_downsample
    scale = seg_cfg.inference.gate_scale
    annotations = read_annotations(seg_cfg.paths.train_csv)
    ids, probs, truth, cls_probs, top, networks, gates = [], [], [], [], [], [], set()
    coarse = []
    areas, inters, truth_areas = [], [], []
    for fold, predictor, valid_ids in _fold_predictors(seg_cfg, models, device):
        log.info("fold %d: predicting %d validation images with %s", fold, len(valid_ids), models[fold][0])
        networks += predictor.segmenters + predictor.classifiers
        gates.add(predictor.gate)
        for chunk, images in _chunks(seg_cfg, valid_ids):
            seg, heads = predictor.segment_with_heads(images)
            if scale is not None:  # the clean gate's coarse pass, by the same fold's models
                coarse.extend(predictor.coarse_levels(images, scale))
            if predictor.classifiers:
                cls_probs.extend(predictor.classify(images))
            elif heads is not None:  # a two-head segmenter: its head is the gate to tune
                cls_probs.extend(heads)
            for image_id, p in zip(chunk, seg, strict=True):
                ids.append(image_id)
                masks = rles_to_masks(annotations.rles(image_id))
                if factor == 1:  # the levels inference thresholds; a few numbers kept, no map
                    levels = quantise(p)
                    tables = [area_table(levels[c], masks[c]) for c in range(len(CLASS_IDS))]
                    areas.append(np.stack([a for a, _ in tables]))
                    inters.append(np.stack([i for _, i in tables]))
                    truth_areas.append(masks.reshape(len(CLASS_IDS), -1).sum(axis=1, dtype=np.int64))
                    top.append(levels.reshape(len(CLASS_IDS), -1).max(axis=1) / 255.0)
                else:
                    probs.append(downsample_probs(p, factor))
                    top.append(p.max(axis=(1, 2)))  # before block averaging lowers it
                    truth.append(downsample_mask(masks, factor))
    if len(gates) != 1:
        raise UserError(f"the folds' models gate differently ({sorted(gates)}); train every fold alike")
    return {
        "ids": ids,
        "probs": np.stack(probs) if probs else None,
        "truth": np.stack(truth) if truth else None,
        "tables": (np.stack(areas), np.stack(inters), np.stack(truth_areas)) if areas else None,
        "cls": np.stack(cls_probs) if cls_probs else None,
        "top": np.stack(top),
        "folds": sorted(models),
        "factor": factor,
        "models": models,
        "networks": networks,
        "gate": gates.pop(),
        "split": split_digest(read_folds(seg_cfg.paths.folds_csv)),
        "checkpoints": [str(p) for fold in sorted(models) for p in models[fold]],
        "gate_scale": scale,
        "gate_levels": np.stack(coarse) if coarse else None,
    }


def pair_dice(oof: dict, post: PostProcessing) -> tuple[np.ndarray, np.ndarray]:
    """(Dice of ``post``'s masks, Dice of an empty mask), float64 (N, 4) each, on every
    out-of-fold (frame, class) pair of :func:`collect_oof`: what the search scored, pair by pair
    (their mean is the report's out-of-fold Dice). ``post`` holds values of the search's grids."""
    if oof["tables"] is not None:
        area, inter, truth_area = oof["tables"]
    else:
        truth_area = oof["truth"].sum(axis=(2, 3), dtype=np.int64)
    dice = np.empty(truth_area.shape, np.float64)
    for c, params in enumerate(post.classes):
        if oof["tables"] is not None:
            t = DEFAULT_THRESHOLDS.index(params.threshold)
            m = DEFAULT_MIN_COMPONENTS.index(params.min_component)
            a, x, min_area = area[:, c, t, m], inter[:, c, t, m], params.min_area
        else:  # downsampled maps: each pair's table at the one setting, in reduced pixels
            factor = oof["factor"]
            grid = ((params.threshold,), (reduced_size(params.min_component, factor),))
            maps = zip(oof["probs"][:, c], oof["truth"][:, c], strict=True)
            tables = [area_table(p, truth, *grid) for p, truth in maps]
            a = np.array([table[0, 0] for table, _ in tables], np.int64)
            x = np.array([table[0, 0] for _, table in tables], np.int64)
            min_area = reduced_size(params.min_area, factor)
        kept = a >= max(min_area, 1)
        if params.cls_threshold is not None and oof["cls"] is not None:
            kept &= oof["cls"][:, c] >= params.cls_threshold
        if params.top_threshold is not None:
            kept &= oof["top"][:, c] >= params.top_threshold
        with np.errstate(invalid="ignore", divide="ignore"):
            kept_dice = 2.0 * x / (a + truth_area[:, c])
        dice[:, c] = np.where(kept, kept_dice, (truth_area[:, c] == 0).astype(np.float64))
    return dice, (truth_area == 0).astype(np.float64)


def tune_clean_gate(oof: dict, post: PostProcessing, max_lost_pairs: float = 1.0) -> TunedGate | None:
    """The clean-frame gate of ``post``'s pipeline, tuned on :func:`collect_oof`'s out-of-fold
    coarse peaks (:func:`.gate.tune_gate`); None when they were not collected
    (``inference.gate_scale: null``). Its ``report`` names the frames it gives up by id.

    Any out-of-fold search can add it to the spec it writes::

        gate = tune_clean_gate(oof, params, cfg.inference.gate_max_lost_pairs)
        save_spec(..., clean_gate=gate and gate.spec)
        summary["clean_gate"] = gate and gate.report
        write_oof_scores(layout.oof_scores(out), oof, gate)
    """
    if oof.get("gate_levels") is None:
        return None
    dice, empty = pair_dice(oof, post)
    absent = classifier_absent(oof["cls"], post, oof["gate"])
    gate = tune_gate(oof["gate_levels"], dice, empty, oof["gate_scale"], absent, max_lost_pairs)
    for entry in gate.report["sacrificed"]:
        entry["image"] = oof["ids"][entry.pop("row")]
    return gate


def full_resolution_score(seg_cfg, models, post, device: str = "cpu") -> dict:
    """Mean and per-class Dice of ``post`` on the out-of-fold frames, predicted as inference
    predicts (full-resolution maps, quantised, gated): what the search's downsampled score
    estimates. Returns ``{"mean_dice", "per_class": {class: dice}, "images"}``."""
    annotations = read_annotations(seg_cfg.paths.train_csv)
    pairs = []
    for _, predictor, valid_ids in _fold_predictors(seg_cfg, models, device, post):
        for chunk, images in _chunks(seg_cfg, valid_ids):
            truth = np.stack([rles_to_masks(annotations.rles(i)) for i in chunk])
            masks = np.stack([p.masks for p in predictor.predict(images)])
            pairs.append(dice_pairs(masks, truth))
    dice = np.concatenate(pairs)  # (N, 4)
    per_class = {str(c): float(dice[:, i].mean()) for i, c in enumerate(CLASS_IDS)}
    return {"mean_dice": float(dice.mean()), "per_class": per_class, "images": len(dice)}


def write_oof_scores(
    path: Path, oof: dict, gate: TunedGate | None = None, post: PostProcessing | None = None
) -> Path:
    """Per image: its fold, the segmenter's peak probability per class and the classifier's (or
    the head's) probability per class, empty without one. ``data.sampler: hard_negatives`` ranks
    defect-free images by it. With a tuned clean-frame ``gate``: each class's coarse peak
    (``gate_<c>``, the level / 255 the gate compares), whether the pipeline earns Dice on the pair
    (``marked_<c>``: skipping the frame would lose it) and whether the gate skips the frame. With
    the searched ``post``: the Dice it earns on each pair (``dice_<c>``, :func:`pair_dice`; their
    mean is the out-of-fold Dice), so two trainings can be compared on the frames both scored."""
    columns = ["ImageId", *(f"peak_{c}" for c in CLASS_IDS), *(f"cls_{c}" for c in CLASS_IDS)]
    dice = None if post is None else pair_dice(oof, post)[0]
    if dice is not None:
        columns += [f"dice_{c}" for c in CLASS_IDS]
    if gate is not None:
        columns += [*(f"gate_{c}" for c in CLASS_IDS), *(f"marked_{c}" for c in CLASS_IDS), "gate_skips"]
    with atomic_write(path, newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for k, image_id in enumerate(oof["ids"]):
            cls = [f"{p:.5f}" for p in oof["cls"][k]] if oof["cls"] is not None else [""] * len(CLASS_IDS)
            row = [image_id, *(f"{p:.5f}" for p in oof["top"][k]), *cls]
            if dice is not None:
                row += [repr(float(v)) for v in dice[k]]
            if gate is not None:  # levels exactly: 19 / 255 prints as 0.0745098 and reads back as 19
                row += [repr(int(v) / 255.0) for v in oof["gate_levels"][k]]
                row += [int(v) for v in gate.marked[k]] + [int(gate.skip[k])]
            writer.writerow(row)
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


def unlearnt_classes(classes: dict) -> dict:
    """The classes switched off because no out-of-fold frame with the class reaches the lowest
    threshold searched (``signal`` of :func:`~.search.class_signal`): the model has not learnt
    them. ``{class: {"defect_images", "peak_on_defects", "lowest_threshold"}}``."""
    out = {}
    for class_id, entry in classes.items():
        signal = entry.get("signal") or {}
        if entry["disabled"] and signal.get("defect_images") and not signal["reaches_threshold"]:
            out[str(class_id)] = {
                k: signal[k] for k in ("defect_images", "peak_on_defects", "lowest_threshold")
            }
    return out


def search_collected(oof: dict, cfg) -> tuple:
    """``(params, report)`` of the threshold search over what :func:`collect_oof` gathered, with
    ``cfg``'s search settings (top threshold, slack)."""
    top = oof["top"] if cfg.inference.search_top_threshold else None
    slack = cfg.inference.search_slack
    if oof["tables"] is not None:
        return search_tables(*oof["tables"], oof["cls"], top_probs=top, slack_images=slack)
    return search_all(
        oof["probs"], oof["truth"], oof["cls"], scale=oof["factor"], top_probs=top, slack_images=slack
    )


def search_thresholds(
    seg_cfg,
    cls_cfg=None,
    out: str | Path | None = None,
    device: str = "cpu",
    members=(),
    record=True,
    name: str | None = None,
) -> dict:
    """Collect OOF predictions, search per-class parameters, write the tuned pipeline (YAML:
    thresholds + :mod:`.pipeline` spec) and the JSON report.

    ``members``: further segmenter configs of an ensemble (see :func:`collect_oof`).
    ``record``: write the OOF score into the checkpoints (False for what-if searches).
    ``name``: the checkpoint of each fold to tune (default ``inference.search_checkpoint``).
    """
    oof = collect_oof(seg_cfg, cls_cfg, device, members, name)
    params, report = search_collected(oof, seg_cfg)
    out = Path(out or seg_cfg.paths.postprocessing or layout.postprocessing(seg_cfg.paths.work_dir))
    tta = tuple(seg_cfg.inference.tta)
    gate = tune_clean_gate(oof, params, seg_cfg.inference.gate_max_lost_pairs)
    folds_csv = seg_cfg.paths.folds_csv
    networks, split = oof["networks"], oof["split"]
    save_spec(out, params, networks, tta, oof["gate"], oof["factor"], folds_csv, split, gate and gate.spec)
    summary = {
        "postprocessing": str(out),
        "images": len(oof["ids"]),
        "folds": oof["folds"],
        "gated": oof["cls"] is not None,
        "gate": oof["gate"],
        "top_threshold_searched": bool(seg_cfg.inference.search_top_threshold) and oof["top"] is not None,
        "mean": report["mean"],
        "classes": {str(c): {k: v for k, v in r.items()} for c, r in report["classes"].items()},
    }
    present = oof["tables"][2] > 0 if oof["tables"] is not None else oof["truth"].any(axis=(2, 3))
    for c, signal in class_signal(oof["top"], present, min(DEFAULT_THRESHOLDS)).items():
        summary["classes"][str(c)]["signal"] = signal
    summary["out_of_fold"] = out_of_fold_score(report, len(oof["ids"]))
    summary["out_of_fold"]["unlearnt"] = unlearnt_classes(summary["classes"])
    summary["clean_gate"] = gate and gate.report
    if oof["factor"] > 1 and seg_cfg.inference.search_full_res_check:
        full = full_resolution_score(seg_cfg, oof["models"], params, device)
        searched = summary["out_of_fold"]
        summary["full_resolution"] = {
            **full,
            "search_mean_dice": searched["mean_dice"],
            "search_per_class": searched["per_class"],
            "difference": full["mean_dice"] - searched["mean_dice"],
            "one_pair": 1.0 / (len(CLASS_IDS) * len(oof["ids"])),
        }
    # the file alone also says which checkpoints earned the score (`steel-defect runs`) and how
    # Dice moves around the chosen point (`steel-defect report --search-report`)
    extra = {"checkpoints": oof["checkpoints"], "curves": {str(c): v for c, v in report["curves"].items()}}
    with atomic_write(layout.search_report(out)) as handle:
        json.dump({**summary, **extra}, handle, indent=2, default=str)
    summary["scores"] = str(write_oof_scores(layout.oof_scores(out), oof, gate, params))
    # the models carry the score their thresholds earned, for the web page and for whoever
    # finds the checkpoint later without its report (their weights, which the spec names, stay)
    for path in oof["checkpoints"] if record else []:
        update_checkpoint(path, out_of_fold=summary["out_of_fold"])
    return summary
