"""The main job, end to end: data -> folds -> classifier + segmenter -> OOF thresholds ->
submission -> score against held-out truth.

``make demo`` (or ``steel-defect demo``) runs it on synthetic data; ``steel-defect demo
--data-dir DIR`` runs on a real Severstal-layout folder, holding out a stratified quarter of
its labelled images as the test set, which neither training nor the threshold search sees.
``--recipe`` picks the configs (:data:`RECIPES`): ``synthetic`` (the default, sized for the
synthetic frames, trains fold 0 only) or ``real`` (``make demo-real``: the ImageNet-pretrained
recipe for real steel, which trains every fold so the thresholds are tuned on all training
images out of fold and the held-out frames are predicted by the fold ensemble; it ends by
distilling that ensemble into one network for the line, :mod:`steel_defect.distill`, scored and
timed beside it). Everything lands in ``--work-dir`` (default ``work/demo``): ``submission.csv``,
``test_truth.csv``, the runs, ``postprocessing.yml``, ``report.html`` (the error analysis of the
test frames) and ``summary.json`` (with ``line_postprocessing``, the distilled pipeline, beside
``postprocessing``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from steel_defect.atomic import atomic_write
from steel_defect.config import layout, load_config
from steel_defect.constants import HOLDOUT_PARTS
from steel_defect.data.annotations import read_annotations, resolve_image_ids, write_annotations
from steel_defect.data.folds import make_folds_table, split_folds
from steel_defect.data.images import read_image
from steel_defect.data.submission import write_submission
from steel_defect.data.synth import mark_synthetic, write_synthetic_dataset
from steel_defect.distill import distill
from steel_defect.distill.fit import unlearnt_message
from steel_defect.distill.run import THRESHOLDS
from steel_defect.errors import UserError
from steel_defect.evaluation.metric import evaluate_files
from steel_defect.evaluation.report import write_report
from steel_defect.inference.pipeline import build_predictor
from steel_defect.inference.pseudo import extra_opt, pseudo_label
from steel_defect.inference.run import list_images, predict_folder, summary_text
from steel_defect.recipes import CONFIGS, RECIPES, DemoData, load_configs, train_round

log = logging.getLogger(__name__)


def _holdout_real(data_dir: Path, work: Path, seed: int, part: int = 0) -> tuple[Path, Path, list[str]]:
    """Split a real labelled folder into train (3/4) and test (quarter ``part``, stratified)
    label files in ``work``."""
    if not 0 <= part < HOLDOUT_PARTS:
        raise UserError(f"holdout part {part} is not one of 0..{HOLDOUT_PARTS - 1}")
    annotations = read_annotations(data_dir / "train.csv")
    ids = resolve_image_ids(annotations, data_dir / "train_images")
    table = make_folds_table(ids, annotations.labels(ids), n_splits=HOLDOUT_PARTS, seed=seed)
    test_ids = table.ImageId[table.fold == part].tolist()
    train_ids = table.ImageId[table.fold != part].tolist()
    write_annotations(work / "train.csv", train_ids, [annotations.rles(i) for i in train_ids])
    write_annotations(work / "test_truth.csv", test_ids, [annotations.rles(i) for i in test_ids])
    return work / "train.csv", data_dir / "train_images", test_ids


def _predict_and_score(predictor, test_images, sample, work: Path, timings: dict) -> dict:
    """Write ``work/submission.csv`` for the test frames and score it against ``work/test_truth.csv``."""
    run = predict_folder(
        predictor, test_images, work / "submission.csv", sample, batch_size=4, progress=False
    )
    timings["predict_s"] = round(run.seconds, 1)
    log.info("%s", summary_text(run))
    return evaluate_files(work / "submission.csv", work / "test_truth.csv")


def _round_result(score: dict, search: dict) -> dict:
    return {
        "mean_dice": score["mean_dice"],
        "per_class": score["per_class"],
        "out_of_fold": search["out_of_fold"],
    }


def prepare_data(
    data_dir: str | Path | None, work: Path, n_images: int, seed: int, holdout: int = 0
) -> DemoData:
    """Synthetic frames (written once), or a real folder with a held-out quarter (number
    ``holdout`` of the stratified split) as the test set; writes ``work/test_truth.csv`` either way."""
    if data_dir is None:
        data = work / "data"
        if not (data / "train.csv").is_file():
            log.info("writing %d synthetic frames to %s", n_images, data)
            write_synthetic_dataset(data, n=n_images, seed=seed)
        mark_synthetic(data)  # folders written before the marker existed
        (work / "test_truth.csv").write_bytes((data / "test_truth.csv").read_bytes())
        return DemoData(
            data / "train.csv", data / "train_images", data / "test_images", data / "sample_submission.csv"
        )
    train_csv, train_images, test_ids = _holdout_real(Path(data_dir), work, seed, holdout)
    sample = work / "sample_submission.csv"
    write_submission(sample, test_ids, [["1 1"] * 4 for _ in test_ids])  # predict exactly these
    return DemoData(train_csv, train_images, train_images, sample)


def pseudo_round(steps, seg_opts, cls_cfg, folds, predictor, data, work, settings, timings) -> tuple:
    """Pseudo-label ``settings["images"]`` with the first round's ensemble, train again with them
    under ``work/round2``; (its work folder, checkpoints, search, score, pseudo summary)."""
    t0 = time.perf_counter()
    pseudo = pseudo_label(predictor, settings["images"], work / "pseudo", batch_size=4)
    timings["pseudo_label_s"] = round(time.perf_counter() - t0, 1)
    work = work / "round2"
    extra = [f"paths.work_dir={work / 'seg'}", extra_opt(pseudo, settings["weight"]), *settings["opts"]]
    seg_cfg = load_config(CONFIGS / steps.seg, [*seg_opts, *extra])
    second: dict = {}
    checkpoints, search = train_round(seg_cfg, cls_cfg, folds, work, second, train_cls=False)
    (work / "test_truth.csv").write_bytes((work.parent / "test_truth.csv").read_bytes())
    predictor = build_predictor(layout.postprocessing(work), checkpoints, backend=seg_cfg.inference.backend)
    score = _predict_and_score(predictor, data.test_images, data.sample, work, second)
    timings.update({f"round2_{key}": value for key, value in second.items()})
    return work, checkpoints, search, score, pseudo


def frames_per_second(predictors: dict, frames: list, batch: int = 4, rounds: int = 2) -> dict[str, float]:
    """Frames/s of each predictor on the same decoded frames, taking turns (so a busy moment
    of the machine costs each alike), the best of ``rounds``; decoding is not counted."""
    for predictor in predictors.values():
        predictor.predict(frames[:batch])  # sessions, caches and exports warm before the clock
    best = dict.fromkeys(predictors, 0.0)
    for _ in range(rounds):
        for name, predictor in predictors.items():
            t0 = time.perf_counter()
            for start in range(0, len(frames), batch):
                predictor.predict(frames[start : start + batch])
            best[name] = max(best[name], len(frames) / (time.perf_counter() - t0))
    return best


def line_round(seg_cfg, ensemble, data: DemoData, work: Path, timings: dict) -> dict:
    """Distil the tuned ensemble of ``work`` into one network (``work/line``), score its tuned
    pipeline on the test frames, and time both pipelines side by side on them with the same
    threads (``ensemble``: the tuned ensemble's predictor)."""
    t0 = time.perf_counter()
    distilled = distill(seg_cfg, layout.postprocessing(work), work / "line")
    timings["distill_s"] = round(time.perf_counter() - t0, 1)
    line = build_predictor(
        distilled["postprocessing"], backend=seg_cfg.inference.backend, threads=ensemble.threads
    )
    out = work / "line" / "submission.csv"
    predict_folder(line, data.test_images, out, data.sample, batch_size=4, progress=False)
    score = evaluate_files(out, work / "test_truth.csv")
    ids = list_images(data.test_images, data.sample)
    frames = [read_image(Path(data.test_images) / i, channels=3) for i in ids]
    rates = frames_per_second({"ensemble": ensemble, "line": line}, frames)
    alternatives = {}
    for name, alternative in distilled["alternatives"].items():  # the other thresholds, scored alike
        other = build_predictor(alternative["postprocessing"], backend=seg_cfg.inference.backend)
        path = work / "line" / f"submission.{name}.csv"
        predict_folder(other, data.test_images, path, data.sample, batch_size=4, progress=False)
        alt_score = evaluate_files(path, work / "test_truth.csv")
        alternatives[name] = {
            "postprocessing": alternative["postprocessing"],
            "mean_dice": alt_score["mean_dice"],
            "per_class": alt_score["per_class"],
            "out_of_fold": alternative["out_of_fold"],
            "submission": str(path),
        }
    return {
        "postprocessing": distilled["postprocessing"],
        "thresholds": distilled["thresholds"],
        "mean_dice": score["mean_dice"],
        "per_class": score["per_class"],
        "out_of_fold": distilled["out_of_fold"],
        "submission": str(out),
        "alternatives": alternatives,
        "speed": {
            "frames": len(frames),
            "threads": ensemble.threads,
            "backend": {"ensemble": ensemble.describe()["backend"], "line": line.describe()["backend"]},
            "ensemble_frames_per_s": round(rates["ensemble"], 3),
            "line_frames_per_s": round(rates["line"], 3),
        },
        "teacher_maps": distilled["teacher"],
        "fit": {key: distilled["fit"][key] for key in ("frames", "loose_above", "loose")}
        | {"worst": distilled["fit"]["worst"][:1]},
    }


def score_empty(work: Path) -> dict:
    """The challenge metric of all-empty masks on the test frames: the baseline to beat."""
    empty = work / "empty_submission.csv"
    truth_ids = read_annotations(work / "test_truth.csv").image_ids
    write_submission(empty, truth_ids, [[""] * 4 for _ in truth_ids])
    return evaluate_files(empty, work / "test_truth.csv")


def refuse_scored_frames(test_ids: list[str], folders: dict) -> None:
    """Raise if a folder of unlabelled frames (``{setting: folder or None}``) holds a test frame:
    a semi-supervised term or a pseudo-label round that saw the scored frames would not be a
    held-out score."""
    scored = set(test_ids)
    for setting, folder in folders.items():
        if folder is None:
            continue
        seen = sorted(p.name for p in Path(folder).iterdir() if p.name in scored)
        if seen:
            shown = ", ".join(seen[:3]) + (", ..." if len(seen) > 3 else "")
            raise UserError(
                f"{setting} {folder} holds {len(seen)} of the test frames this run scores ({shown}); "
                "point it at a folder without them"
            )


def run_demo(
    data_dir: str | Path | None = None,
    work_dir: str | Path = "work/demo",
    n_images: int = 240,
    seed: int = 0,
    epochs: int | None = None,
    recipe: str = "synthetic",
    opts: list[str] | None = None,
    pseudo_images: str | Path | None = None,
    pseudo_weight: float = 1.0,
    pseudo_opts: list[str] | None = None,
    holdout: int = 0,
    seg_config: str | Path | None = None,
    distil: bool | None = None,
) -> dict:
    """Run the whole recipe; returns (and writes to ``summary.json``) the scores and paths.

    ``opts`` are ``key=value`` overrides for the recipe's segmenter config. With
    ``pseudo_images`` (a folder of unlabelled frames) a second round follows: the first
    round's ensemble pseudo-labels those frames (:mod:`steel_defect.inference.pseudo`), the
    segmenter trains again with them as ``data.extra`` (under ``round2/``), and the summary
    gives both rounds' scores on the same test frames. ``pseudo_weight`` is the pseudo set's
    ``data.extra`` weight; ``pseudo_opts`` override the second round's segmenter config only
    (e.g. fewer epochs, since each epoch now holds more frames). ``holdout`` picks which
    quarter of a real folder is the test set (0..3); running all four scores every frame once
    (``bench/real_holdout.py``). ``seg_config``: a segmenter config in place of the recipe's (a
    variant to compare, e.g. ``configs/real/unet_effnet_lite0_fullres.yml``). ``distil``: end by
    distilling the tuned ensemble into one network for the line (:func:`line_round`); None: the
    recipe's choice (``real`` does).
    """
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    steps = RECIPES[recipe]
    if seg_config is not None:
        if not Path(seg_config).is_file():
            raise FileNotFoundError(f"segmenter config {seg_config} does not exist")
        steps = replace(steps, seg=str(Path(seg_config).resolve()))  # CONFIGS / an absolute path = it
    start = time.perf_counter()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(data_dir, work, n_images, seed, holdout)
    seg_cfg, cls_cfg, seg_opts = load_configs(steps, data, work, seed, epochs, opts)
    semi = seg_cfg.train.semi
    refuse_scored_frames(
        read_annotations(work / "test_truth.csv").image_ids,
        {
            "train.semi.unlabelled": semi and semi["unlabelled"],
            "--pseudo-images": pseudo_images,
            "distill.unlabelled": seg_cfg.distill.unlabelled,
        },
    )
    split_folds(seg_cfg)
    folds = range(seg_cfg.folds.n_splits) if steps.all_folds else (0,)
    timings: dict = {}
    checkpoints, search = train_round(seg_cfg, cls_cfg, folds, work, timings)
    # the tuned pipeline as `steel-defect predict` and `serve` rebuild it: the same checks
    predictor = build_predictor(layout.postprocessing(work), checkpoints, backend=seg_cfg.inference.backend)
    score = _predict_and_score(predictor, data.test_images, data.sample, work, timings)
    rounds = []
    if pseudo_images is not None:
        rounds.append(_round_result(score, search))
        settings = {"images": pseudo_images, "weight": pseudo_weight, "opts": pseudo_opts or []}
        work, checkpoints, search, score, pseudo = pseudo_round(
            steps, seg_opts, cls_cfg, folds, predictor, data, work, settings, timings
        )
        rounds.append({**_round_result(score, search), "pseudo": pseudo})
    line = None
    if steps.distill if distil is None else distil:
        if rounds:  # the second round's ensemble is the teacher
            predictor = build_predictor(
                layout.postprocessing(work), checkpoints, backend=seg_cfg.inference.backend
            )
        line = line_round(seg_cfg, predictor, data, work, timings)
    baseline = score_empty(work)
    t0 = time.perf_counter()
    report = write_report(
        work / "submission.csv",
        work / "test_truth.csv",
        data.test_images,
        work / "report.html",
        search_report=layout.search_report(layout.postprocessing(work)),
    )
    timings["report_s"] = round(time.perf_counter() - t0, 1)
    timings["total_s"] = round(time.perf_counter() - start, 1)
    summary = _summary(recipe, score, baseline, search, report, checkpoints, work, timings)
    if data_dir is not None:
        summary["holdout"] = holdout
    if rounds:
        summary["rounds"] = rounds
    if line is not None:
        summary["line_postprocessing"] = line.pop("postprocessing")
        summary["line"] = line
    with atomic_write(layout.demo_summary(work)) as handle:
        json.dump(summary, handle, indent=2)
    return summary


def _summary(recipe, score, baseline, search, report, checkpoints, work: Path, timings) -> dict:
    return {
        "mean_dice": score["mean_dice"],
        "per_class": score["per_class"],
        "empty_baseline": baseline["mean_dice"],
        "empty_per_class": baseline["per_class"],
        "test_images": score["images"],
        "recipe": recipe,
        "oof_search": search["mean"],
        "out_of_fold": search["out_of_fold"],
        "full_resolution": search.get("full_resolution"),
        "postprocessing": str(layout.postprocessing(work)),
        "submission": str(work / "submission.csv"),
        "report": report["out"],
        "test_truth": str(work / "test_truth.csv"),
        "checkpoints": [str(c) for c in checkpoints],
        "timings": timings,
        "serve": f"steel-defect serve --demo-dir {work}",
        "predict": f"steel-defect predict --postprocessing {layout.postprocessing(work)} "
        "--images DIR --out submission.csv",
    }


def format_summary(summary: dict) -> str:
    lines = [
        f"recipe: {summary.get('recipe', 'synthetic')}, test images: {summary['test_images']}",
        f"{'':10}{'model':>8}{'empty':>8}",
        f"{'mean':10}{summary['mean_dice']:>8.4f}{summary['empty_baseline']:>8.4f}",
    ]
    for class_id, value in summary["per_class"].items():
        lines.append(f"{'class ' + class_id:10}{value:>8.4f}{summary['empty_per_class'][class_id]:>8.4f}")
    for k, result in enumerate(summary.get("rounds", []), start=1):
        pseudo = result.get("pseudo")
        kept = f", + {pseudo['kept']} of {pseudo['images']} pseudo-labelled frames" if pseudo else ""
        classes = " ".join(f"{c}:{v:.4f}" for c, v in result["per_class"].items())
        lines.append(f"round {k}{kept}: {result['mean_dice']:.4f} (classes {classes})")
    oof = summary.get("out_of_fold")
    if oof:
        lines.append(
            f"out-of-fold ({oof['images']} images, thresholds tuned there): "
            f"{oof['mean_dice']:.4f} vs {oof['empty']:.4f} empty"
        )
    unlearnt = (summary.get("out_of_fold") or {}).get("unlearnt")
    if unlearnt:
        lowest = next(iter(unlearnt.values()))["lowest_threshold"]
        named = ", ".join(
            f"{c} ({u['defect_images']} frames, highest {u['peak_on_defects']:.2f})"
            for c, u in unlearnt.items()
        )
        lines.append(
            f"not learnt yet (off; out of fold their maps never reach {lowest:.2f} on their defects): "
            f"{'class' if len(unlearnt) == 1 else 'classes'} {named}. They need more labelled frames "
            "(steel-defect label)"
        )
    line, oof = summary.get("line"), summary.get("out_of_fold")
    if line:
        speed = line["speed"]
        lines.append(
            f"line pipeline (one distilled network, {THRESHOLDS[line.get('thresholds', 'students')]}): "
            f"test {line['mean_dice']:.4f}, out-of-fold {line['out_of_fold']['mean_dice']:.4f}; the "
            f"ensemble: test {summary['mean_dice']:.4f}, out-of-fold {oof['mean_dice']:.4f}"
        )
        for name, other in (line.get("alternatives") or {}).items():
            lines.append(
                f"  with {THRESHOLDS[name]} ({Path(other['postprocessing']).name}): test "
                f"{other['mean_dice']:.4f}, out-of-fold {other['out_of_fold']['mean_dice']:.4f}"
            )
        lines.append(
            f"frames/s on the {speed['frames']} test frames, {speed['threads']} threads, side by side: "
            f"ensemble {speed['ensemble_frames_per_s']:.2f} ({speed['backend']['ensemble']}), line "
            f"{speed['line_frames_per_s']:.2f} ({speed['backend']['line']})"
        )
        message = unlearnt_message(line.get("fit") or {})
        if message:
            lines.append(message)
    full = summary.get("full_resolution")
    if full:
        lines.append(
            f"the same, re-scored at full resolution as inference runs: {full['mean_dice']:.4f} "
            f"(one (image, class) pair is {full['one_pair']:.4f})"
        )
    lines += [
        f"submission:      {summary['submission']}",
        f"truth:           {summary['test_truth']}",
        f"error analysis:  {summary['report']}   (open in a browser)",
        f"post-processing: {summary['postprocessing']}",
        *([f"line pipeline:   {summary['line_postprocessing']}"] if line else []),
        f"timings (s):     {summary['timings']}",
        f"web GUI:         {summary['serve']}   (then open http://127.0.0.1:8000)",
        f"predict a folder: {summary['predict']}",
    ]
    return "\n".join(lines)
