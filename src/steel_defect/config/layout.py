"""The files a run leaves under ``paths.work_dir``: the one place that spells out their names.

Layout (``steel-defect train`` writes the fold folders, ``steel-defect thresholds`` the rest)::

    <work_dir>/folds.csv                       the fold split (``paths.folds_csv`` default)
    <work_dir>/postprocessing.yml              searched thresholds (``paths.postprocessing`` default)
    <work_dir>/postprocessing.report.json      the search's report: Dice curves, checkpoints used
    <work_dir>/postprocessing.oof.csv          per image: peak and classifier probabilities
    <work_dir>/fold<K>/config.yml              resolved config of the run
    <work_dir>/fold<K>/checkpoints/last.pth    weights + optimizer + history: ``--resume`` reads it
    <work_dir>/fold<K>/checkpoints/best.pth    the best epoch by the monitored validation metric
    <work_dir>/fold<K>/checkpoints/epoch_NNN.pth, swa.pth, snapshot_K.pth
    <work_dir>/fold<K>/history.json, curves.png, logs/

Everything else (runner, artifacts, out-of-fold search, demo, CLI, web app) asks
:class:`RunPaths` or the functions below instead of joining names itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from steel_defect.errors import UserError

FOLD_DIR = re.compile(r"fold(\d+)")


@dataclass(frozen=True)
class RunPaths:
    """The files of one trained fold, ``<work_dir>/fold<K>/``."""

    run_dir: Path

    @classmethod
    def of(cls, work_dir: str | Path, fold: int) -> RunPaths:
        return cls(Path(work_dir) / f"fold{fold}")

    @staticmethod
    def is_run_dir(path: str | Path) -> bool:
        """Whether ``path`` is named like a fold folder (``fold<K>``)."""
        return FOLD_DIR.fullmatch(Path(path).name) is not None

    @property
    def fold(self) -> int:
        match = FOLD_DIR.fullmatch(self.run_dir.name)
        if match is None:
            raise UserError(f"{self.run_dir} is not a fold<K> folder")
        return int(match.group(1))

    @property
    def config(self) -> Path:
        return self.run_dir / "config.yml"

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    def named(self, name: str) -> Path:
        """A checkpoint by its name: ``best``, ``last``, ``swa``, ``snapshot_K``, ``epoch_NNN``."""
        return self.checkpoints / f"{name}.pth"

    @property
    def best(self) -> Path:
        return self.named("best")

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pth"

    @property
    def swa(self) -> Path:
        return self.checkpoints / "swa.pth"

    def epoch(self, epoch: int) -> Path:
        """A top-k checkpoint (``epoch_NNN.pth``)."""
        return self.checkpoints / f"epoch_{epoch:03d}.pth"

    def snapshot(self, k: int) -> Path:
        """The checkpoint at the end of learning-rate cycle ``k``."""
        return self.checkpoints / f"snapshot_{k}.pth"

    @property
    def history(self) -> Path:
        return self.run_dir / "history.json"

    @property
    def curves(self) -> Path:
        return self.run_dir / "curves.png"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"


CHECKPOINT_NAME = re.compile(r"best|last|swa|snapshot_\d+|epoch_\d{3}")


def check_checkpoint_name(name: str) -> str:
    """``name`` if it names a checkpoint a run writes (``best``, ``swa``, ``snapshot_2``, ...)."""
    if not isinstance(name, str) or not CHECKPOINT_NAME.fullmatch(name):
        raise UserError(
            f"unknown checkpoint name {name!r}; valid: best, last, swa, snapshot_K, epoch_NNN "
            "(the files in fold<K>/checkpoints/ without .pth)"
        )
    return name


def trained_folds(work_dir: str | Path, name: str = "best") -> dict[int, Path]:
    """``{fold: <name>.pth}`` of every fold under ``work_dir`` that has one, by fold."""
    check_checkpoint_name(name)
    found = {}
    for run_dir in Path(work_dir).glob("fold*"):
        if RunPaths.is_run_dir(run_dir) and RunPaths(run_dir).named(name).is_file():
            found[RunPaths(run_dir).fold] = RunPaths(run_dir).named(name)
    return dict(sorted(found.items()))


def best_checkpoints(work_dir: str | Path, folds, name: str = "best") -> list[Path]:
    """``<name>.pth`` (default ``best.pth``) of each of ``folds`` under ``work_dir``."""
    return [RunPaths.of(work_dir, fold).named(check_checkpoint_name(name)) for fold in folds]


def folds_csv(work_dir: str | Path) -> Path:
    """The default fold split of a work directory (``paths.folds_csv``)."""
    return Path(work_dir) / "folds.csv"


def postprocessing(work_dir: str | Path) -> Path:
    """The default thresholds YAML of a work directory (``paths.postprocessing``)."""
    return Path(work_dir) / "postprocessing.yml"


def search_report(postprocessing_yml: str | Path) -> Path:
    """The threshold search's JSON report beside its YAML."""
    return Path(postprocessing_yml).with_suffix(".report.json")


def oof_scores(postprocessing_yml: str | Path) -> Path:
    """The per-image out-of-fold scores CSV beside the search's YAML."""
    return Path(postprocessing_yml).with_suffix(".oof.csv")


def demo_summary(demo_dir: str | Path) -> Path:
    """What ``steel-defect demo`` wrote (scores, checkpoints, post-processing); ``serve`` reads it."""
    return Path(demo_dir) / "summary.json"
