"""The training recipes: which configs train, on which folds, and one round of them.

``steel-defect demo`` (:mod:`steel_defect.demo`) and ``steel-defect labels train``
(:mod:`steel_defect.labels.train`) run the same recipe the same way: the configs of
:data:`RECIPES` loaded onto a labelled folder (:func:`load_configs`), every fold trained and the
thresholds searched out of fold (:func:`train_round`), then, where the recipe says so, the tuned
ensemble distilled into one network for the line (:func:`steel_defect.distill.distill`).

    seg_cfg, cls_cfg, _ = load_configs(RECIPES["real"], data, work, seed=0, epochs=None, opts=[])
    split_folds(seg_cfg)
    checkpoints, search = train_round(seg_cfg, cls_cfg, range(4), work, timings)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from steel_defect.config import layout, load_config
from steel_defect.inference.oof import search_thresholds
from steel_defect.training.checks import check_components
from steel_defect.training.runner import train

# The shipped configs are package data (configs/ at the top of a checkout links here), so a
# plain `pip install .` finds them as well as an editable install.
CONFIGS = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class Recipe:
    """The configs of one recipe and which folds it trains."""

    seg: str  # relative to configs/
    cls: str | None  # None: no classifier (the threshold search gates on the segmenter alone)
    all_folds: bool  # False: fold 0 only (the demo; `labels train` trains every fold regardless)
    # end by distilling the tuned ensemble into one network (the seg config's distill section);
    # not for `make demo`: its K + 1 students would double its training
    distill: bool = False


RECIPES = {
    "synthetic": Recipe("demo/synth_seg_lite0.yml", "demo/synth_cls.yml", all_folds=False),
    "real": Recipe("real/unet_effnet_lite0.yml", None, all_folds=True, distill=True),
}


@dataclass(frozen=True)
class DemoData:
    """Where a run's frames are: the labelled training set and the test frames to score."""

    train_csv: Path
    train_images: Path
    test_images: Path
    sample: Path | None = None  # the sample submission: which test frames to predict, in order


def load_configs(steps: Recipe, data: DemoData, work: Path, seed: int, epochs, opts) -> tuple:
    """(segmenter config, classifier config or None, the segmenter's opts for a second round);
    their component names are checked here, before folds or checkpoints are written. ``opts``
    override the segmenter's config; ``epochs`` both configs'."""
    paths = [
        f"paths.train_csv={data.train_csv}",
        f"paths.train_images={data.train_images}",
        f"paths.folds_csv={work / 'folds.csv'}",
        f"seed={seed}",
    ]
    extra = [f"train.epochs={epochs}"] if epochs else []
    seg_opts = [*paths, f"paths.work_dir={work / 'seg'}", *extra, *(opts or [])]
    seg_cfg = load_config(CONFIGS / steps.seg, seg_opts)
    cls_cfg = None
    if steps.cls is not None:
        cls_cfg = load_config(CONFIGS / steps.cls, [*paths, f"paths.work_dir={work / 'cls'}", *extra])
    for cfg in (seg_cfg, cls_cfg):
        if cfg is not None:
            check_components(cfg)
    return seg_cfg, cls_cfg, seg_opts


def train_round(
    seg_cfg, cls_cfg, folds, work: Path, timings: dict, train_cls: bool = True, progress=None
) -> tuple[list[Path], dict]:
    """Train every fold (of the classifier too unless ``train_cls`` is False: a second round
    reuses the first round's), search thresholds out of fold; (checkpoints, search).

    ``progress``: called with ``{"stage": "train", "network", "fold", "epoch", "epochs"}`` after
    each epoch and ``{"stage": "search"}`` before the search."""
    for name, cfg in (("classifier", cls_cfg if train_cls else None), ("segmenter", seg_cfg)):
        if cfg is None:
            continue
        t0 = time.perf_counter()
        for fold in folds:
            report = None
            if progress is not None:
                event = {"stage": "train", "network": name, "fold": fold}
                report = _epochs_to(progress, event)
            train(cfg, fold=fold, progress=report)
        timings[f"train_{name}_s"] = round(time.perf_counter() - t0, 1)
    if progress is not None:
        progress({"stage": "search"})
    t0 = time.perf_counter()
    search = search_thresholds(seg_cfg, cls_cfg, layout.postprocessing(work))
    timings["threshold_search_s"] = round(time.perf_counter() - t0, 1)
    checkpoints = layout.best_checkpoints(seg_cfg.paths.work_dir, folds, seg_cfg.inference.search_checkpoint)
    if cls_cfg is not None:
        checkpoints += layout.best_checkpoints(
            cls_cfg.paths.work_dir, folds, cls_cfg.inference.search_checkpoint
        )
    return checkpoints, search


def _epochs_to(progress, event: dict):
    return lambda epoch, epochs: progress({**event, "epoch": epoch, "epochs": epochs})
