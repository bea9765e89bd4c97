"""The error-analysis report: one self-contained HTML page about where a submission loses Dice.

    steel-defect report --pred SUB.csv --truth TRUTH.csv --images DIR --out report.html \\
        [--worst 6] [--search-report work/x/postprocessing.report.json] [--probs-from SEG.pth [CLS.pth]]

Two passes: the first scores every image (:func:`steel_defect.evaluation.analysis.score_images`,
a few integers per image), the second decodes and draws only the worst ``N`` images per
class. Every picture is inlined as a data URI and the page has no script, so it opens offline
and can be mailed as one file. ``make demo`` writes one for its test frames.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from steel_defect.atomic import atomic_write
from steel_defect.constants import CLASS_COLORS, CLASS_IDS, CLASS_NAMES, IMAGE_SHAPE
from steel_defect.data.images import read_image
from steel_defect.data.rle import rle_to_mask
from steel_defect.errors import UserError
from steel_defect.evaluation import figures
from steel_defect.evaluation.analysis import (
    ImageScores,
    confusion,
    dice_by_area,
    overall,
    score_images,
    worst_images,
)

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; color: #1d2329; background: #f5f7f9; margin: 0; }
main { max-width: 1240px; margin: 0 auto; padding: 16px 24px 48px; }
section { background: #fff; border: 1px solid #dde2e7; border-radius: 10px; padding: 8px 18px 16px;
  margin: 16px 0; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border-bottom: 1px solid #dde2e7; padding: 3px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.swatch { display: inline-block; width: 14px; height: 14px; border-radius: 3px; border: 1px solid #333;
  vertical-align: -2px; margin-right: 6px; }
.muted { color: #66707a; }
.row { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure { margin: 8px 0; }
figure img.frame { width: 100%; max-width: 1200px; display: block; border-radius: 4px; }
figcaption { font-size: 13px; color: #444; }
"""


def _uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(data: bytes, alt: str, mime: str = "image/png", cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} alt="{escape(alt)}" src="{_uri(data, mime)}">'


def _num(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _summary_table(result: dict) -> str:
    model, empty = result["model"], result["empty"]
    rows = [("mean (all pairs)", model["mean_dice"], empty["mean_dice"])]
    rows += [(f"class {c}", model["per_class"][str(c)], empty["per_class"][str(c)]) for c in CLASS_IDS]
    body = "".join(
        f"<tr><td>{escape(name)}</td><td>{m:.4f}</td><td>{e:.4f}</td><td>{m - e:+.4f}</td></tr>"
        for name, m, e in rows
    )
    return (
        "<table id='summary'><tr><th></th><th>model Dice</th><th>all-empty Dice</th><th>gain</th></tr>"
        f"{body}</table>"
    )


def _confusion_table(class_id: int, table: dict) -> str:
    labels = {
        "tp": "both present (TP)",
        "fp": "false alarm (FP)",
        "fn": "missed (FN)",
        "tn": "both empty (TN)",
    }
    body = "".join(
        f"<tr data-cell='{cell}'><td>{label}</td><td class='count'>{table[cell]}</td>"
        f"<td>{table['cost'][cell]['class']:.4f}</td><td>{table['cost'][cell]['mean']:.4f}</td></tr>"
        for cell, label in labels.items()
    )
    return (
        f"<table class='confusion' data-class='{class_id}'><tr><th>images</th><th>count</th>"
        "<th>Dice lost (class mean)</th><th>Dice lost (overall mean)</th></tr>"
        f"{body}</table><p>precision {_num(table['precision'], 3)}, recall {_num(table['recall'], 3)} "
        "(a positive is an image whose mask is not empty)</p>"
    )


def _size_table(bins: list[dict]) -> str:
    body = "".join(
        f"<tr><td>{b['low']:,}–{b['high']:,}</td><td>{b['images']}</td><td>{_num(b['mean_dice'])}</td></tr>"
        for b in bins
    )
    return f"<table><tr><th>true area (px)</th><th>images</th><th>mean Dice</th></tr>{body}</table>"


def _probabilities(predictor, probed: dict, image_id: str, frame) -> tuple:
    """(classifier probabilities (4,) or None, maximum pixel probability per class (4,)), cached
    per image because one frame can be among the worst of several classes."""
    if image_id not in probed:
        top = predictor.segment([frame])[0].max(axis=(1, 2))
        cls = predictor.classify([frame])
        probed[image_id] = (None if cls is None else cls[0], top)
    return probed[image_id]


def _worst(
    scores: ImageScores, pred_rles: dict, truth, images_dir: Path, index: int, n: int, shape, probe
) -> str:
    """The second pass: decode and draw only this class's ``n`` worst frames.

    ``probe``: ``(predictor, cache)`` to show the model's probabilities for the frame, or None.
    """
    class_id = CLASS_IDS[index]
    parts = []
    for row in worst_images(scores, index, n):
        image_id = scores.ids[row]
        pred = rle_to_mask(pred_rles[image_id][index], shape)
        true = rle_to_mask(truth.rles(image_id)[index], shape)
        frame = read_image(images_dir / image_id, expected_shape=shape)
        known = ""
        if probe is not None:
            cls, top = _probabilities(*probe, image_id, frame)
            known = f" · max pixel p {top[index]:.3f}"
            known += "" if cls is None else f" · classifier p {cls[index]:.3f}"
        kind = {
            (True, False): "false alarm (FP)",
            (False, True): "missed (FN)",
            (True, True): "both present (TP)",
        }[(bool(pred.any()), bool(true.any()))]
        caption = (
            f"{escape(image_id)} · Dice {scores.dice[row, index]:.3f} · {kind} · "
            f"truth {scores.truth_area[row, index]:,} px, predicted {scores.pred_area[row, index]:,} px"
        ) + known
        picture = _img(figures.overlay(frame, pred, true, class_id), image_id, "image/jpeg", "frame")
        parts.append(
            f"<figure data-image='{escape(image_id)}'>{picture}<figcaption>{caption}</figcaption></figure>"
        )
    if not parts:
        return "<p class='muted'>No image lost Dice on this class.</p>"
    return "".join(parts)


def _chosen(curves: dict) -> str:
    """What the search chose; a class it switched off predicts nothing whatever the curves say."""
    params = curves.get("params") or {}
    text = ", ".join(f"{k} {v}" for k, v in params.items() if v is not None)
    if curves.get("disabled"):
        return f"<p class='chosen'>Switched off: {escape(switched_off_reason(curves.get('signal')))}</p>"
    return f"<p class='chosen'>Chosen: {escape(text)}.</p>" if text else ""


def _class_section(scores, pred_rles, truth, images_dir, index, n_worst, curves, shape, probe) -> str:
    class_id = CLASS_IDS[index]
    defect = scores.truth_area[:, index] > 0
    bins = dice_by_area(scores, index)
    pictures = ""
    if defect.any():
        dice, area = scores.dice[defect, index], scores.truth_area[defect, index]
        pictures = _img(figures.dice_histogram(dice, class_id), "Dice histogram") + _img(
            figures.dice_vs_area(area, dice, bins, class_id), "Dice against defect area"
        )
    search = ""
    if curves is not None:
        search = (
            "<h3>Threshold search (out of fold)</h3>"
            + _img(figures.search_curves(curves, class_id), "Dice against threshold and min area")
            + _chosen(curves)
        )
    swatch = f"<span class='swatch' style='background:{CLASS_COLORS[class_id]}'></span>"
    tables = _confusion_table(class_id, confusion(scores, index)) + _size_table(bins)
    return (
        f"<section id='class-{class_id}'><h2>{swatch}Class {class_id} · {escape(CLASS_NAMES[class_id])}</h2>"
        f"<div class='row'><div>{tables}</div>"
        f"<div>{pictures or '<p class=muted>No defect image of this class.</p>'}</div></div>{search}"
        f"<h3>Worst {n_worst} images</h3><p class='muted'>Filled: prediction. Outlined: truth.</p>"
        f"{_worst(scores, pred_rles, truth, images_dir, index, n_worst, shape, probe)}</section>"
    )


def read_search_curves(path: str | Path) -> dict:
    """Per class, the ``curves`` of a threshold-search ``.report.json`` with the chosen ``params``
    and whether the class was ``disabled``; errors say how to get a file that has them."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"search report {path} does not exist; `steel-defect thresholds` writes it beside the YAML"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"search report {path} cannot be read as JSON: {err}") from None
    curves = data.get("curves") if isinstance(data, dict) else None
    if not isinstance(curves, dict) or any(str(c) not in curves for c in CLASS_IDS):
        raise UserError(
            f"search report {path} has no per-class 'curves' (written before they were recorded); "
            "run `steel-defect thresholds` again to get them"
        )
    classes = data.get("classes", {})
    return {c: {**curves[str(c)], **_params(classes.get(str(c), {}))} for c in CLASS_IDS}


def _params(entry: dict) -> dict:
    return {
        "params": entry.get("params"),
        "disabled": bool(entry.get("disabled")),
        "signal": entry.get("signal"),
    }


def switched_off_reason(signal: dict | None) -> str:
    """Why the search switched a class off, from its out-of-fold ``signal``
    (:func:`steel_defect.inference.search.class_signal`; None in reports written before it)."""
    margin = (
        "the best point (starred) beat empty masks by less than one image's worth, "
        "so this class predicts nothing."
    )
    if not signal:
        return margin
    n, lowest = signal["defect_images"], signal["lowest_threshold"]
    if n == 0:
        return "no out-of-fold frame has this class, so there is nothing to tune it on; it predicts nothing."
    if not signal["reaches_threshold"]:
        return (
            f"on none of the {n} out-of-fold frames with this class does the model reach the lowest "
            f"threshold searched ({lowest:.2f}; its highest is {signal['peak_on_defects']:.2f}), so no "
            "setting can find these defects. The model has not learnt the class yet: it needs more "
            "labelled frames of it (steel-defect label), not other thresholds."
        )
    return margin


def write_report(
    pred_path: str | Path,
    truth_path: str | Path,
    images_dir: str | Path,
    out: str | Path,
    worst: int = 6,
    search_report: str | Path | None = None,
    shape: tuple[int, int] = IMAGE_SHAPE,
    predictor=None,
) -> dict:
    """Score ``pred_path`` against ``truth_path`` and write the HTML report to ``out`` atomically.

    ``predictor`` (a :class:`~steel_defect.inference.predictor.Predictor`, optional) runs on the
    drawn frames only, to show each one's maximum pixel and classifier probabilities.

    Returns ``{"out", "images", "mean_dice", "empty_dice", "per_class"}``.
    """
    if worst < 0:
        raise UserError(f"--worst must be 0 or more, got {worst}")
    curves = read_search_curves(search_report) if search_report else {}
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder {images_dir} does not exist; pass the frames with --images")
    scores, pred_rles, truth = score_images(pred_path, truth_path, shape)
    result = overall(scores)
    probe = None if predictor is None else (predictor, {})
    sections = "".join(
        _class_section(scores, pred_rles, truth, images_dir, i, worst, curves.get(c), shape, probe)
        for i, c in enumerate(CLASS_IDS)
    )
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<link rel='icon' href='data:,'><title>steel-defect error analysis</title>"
        f"<style>{STYLE}</style></head><body><main><h1>Error analysis</h1>"
        f"<p class='muted'>{escape(str(pred_path))} against {escape(str(truth_path))}: "
        f"{len(scores.ids)} images × {len(CLASS_IDS)} classes. An empty prediction on an empty truth "
        "scores 1, so each false alarm on a defect-free image costs a whole point.</p>"
        f"<section><h2>Dice</h2>{_summary_table(result)}</section>{sections}</main></body></html>"
    )
    with atomic_write(out) as handle:
        handle.write(page)
    return {
        "out": str(out),
        "images": len(scores.ids),
        "mean_dice": result["model"]["mean_dice"],
        "empty_dice": result["empty"]["mean_dice"],
        "per_class": result["model"]["per_class"],
    }
