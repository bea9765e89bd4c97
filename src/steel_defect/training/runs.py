"""The runs leaderboard: every trained fold under some folders, side by side.

    steel-defect runs [WORK_DIR ...] [--csv | --json]
    steel-defect runs --diff RUN_A RUN_B        # config keys that differ between two runs

A run is a ``fold<K>/`` folder holding the ``config.yml`` that training saves
(:mod:`steel_defect.training.artifacts` documents the layout). Everything shown comes from
files the run left: the resolved config, ``history.json`` (epochs, monitored metric, wall time)
and the out-of-fold score that ``steel-defect thresholds`` writes into the checkpoints it used,
read from ``best.pth`` memory-mapped so its weights are never loaded.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path

import yaml

from steel_defect.config.layout import RunPaths
from steel_defect.errors import UserError
from steel_defect.models.checkpoint import read_entry
from steel_defect.training.runner import TASKS

COLUMNS = (
    "run",
    "name",
    "task",
    "model",
    "fold",
    "epochs",
    "best_epoch",
    "monitor",
    "best",
    "oof_dice",
    "wall_s",
    "date",
)


def find_runs(roots) -> list[tuple[Path, Path]]:
    """``(root, run_dir)`` of every run under ``roots`` (a root may itself be a run), sorted.

    A run under two of the roots (``work`` and ``work/demo``) is listed once, under the first.
    """
    found, seen = [], set()
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"{root} is not a folder; pass work directories that hold fold<K>/ runs")
        candidates = [root] if RunPaths.is_run_dir(root) else sorted(root.rglob("fold*"))
        for run in candidates:
            if RunPaths.is_run_dir(run) and RunPaths(run).config.is_file() and run.resolve() not in seen:
                seen.add(run.resolve())
                found.append((root, run))
    return found


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read the run's config ({err})") from None
    if not isinstance(data, dict) or "task" not in data:
        raise UserError(f"{path}: not a resolved steel-defect config (no 'task' key)")
    return data


def _read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []  # started, no epoch finished yet
    try:
        history = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(
            f"{path}: cannot read the run's history ({err}); delete it or rerun the fold"
        ) from None
    if not isinstance(history, list):
        raise UserError(f"{path}: expected a list of epochs")
    return history


def _out_of_fold(checkpoint: Path) -> float | None:
    """The OOF mean Dice a threshold search recorded in the checkpoint, if any."""
    if not checkpoint.is_file():
        return None
    oof = read_entry(checkpoint, "out_of_fold")  # an old or foreign file: no score, no failure
    return oof.get("mean_dice") if isinstance(oof, dict) else None


def _name(root: Path, run_dir: Path) -> str:
    """The run's work directory, relative to the searched folder's parent (``demo/seg``)."""
    root, work = root.resolve(), run_dir.resolve().parent
    if work != root and root not in work.parents:  # the root was the fold folder itself
        return work.name
    return str(Path(root.name) / work.relative_to(root))


def read_run(root: Path, run_dir: Path) -> dict:
    """One leaderboard row (keys :data:`COLUMNS`) from the files a run left in ``run_dir``."""
    paths = RunPaths(run_dir)
    cfg = _read_yaml(paths.config)
    history = _read_history(paths.history)
    _, _, monitor, minimize = TASKS.get(cfg["task"], (None, None, None, False))
    scored = [h for h in history if monitor in h.get("valid", {})]
    best = None
    if scored:  # the first best epoch, as CheckpointCallback keeps it
        best = (min if minimize else max)(scored, key=lambda h: h["valid"][monitor])
    seconds = [h.get("seconds") for h in history]
    if history and all(s is not None for s in seconds):
        wall = sum(seconds)
    elif history:  # runs from before epochs were timed: from config.yml (start) to the last epoch
        wall = paths.history.stat().st_mtime - paths.config.stat().st_mtime
    else:
        wall = None
    last = paths.history if history else paths.config
    date = history[-1].get("finished") if history else None
    date = date or datetime.fromtimestamp(last.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    model = cfg.get("model", {})
    return {
        "run": str(run_dir),
        "name": _name(root, run_dir),
        "task": cfg["task"],
        "model": f"{model.get('name')}/{model.get('encoder')}",
        "fold": paths.fold,
        "epochs": f"{len(history)}/{cfg.get('train', {}).get('epochs')}",
        "best_epoch": best["epoch"] if best else None,
        "monitor": monitor,
        "best": best["valid"][monitor] if best else None,
        "oof_dice": _out_of_fold(paths.best),
        "wall_s": None if wall is None else round(max(wall, 0.0), 1),
        "date": date[:16].replace("T", " "),
    }


def leaderboard(roots) -> list[dict]:
    """Rows of every run under ``roots``: best OOF Dice first, then the rest by path."""
    runs = find_runs(roots)
    if not runs:
        raise FileNotFoundError(
            f"no runs under {', '.join(map(str, roots))} (a run is a fold<K>/ folder with config.yml; "
            "train one with `steel-defect train`)"
        )
    rows = [read_run(root, run_dir) for root, run_dir in runs]
    return sorted(rows, key=lambda r: (r["oof_dice"] is None, -(r["oof_dice"] or 0.0), r["run"]))


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def diff_configs(run_a: str | Path, run_b: str | Path) -> list[tuple[str, object, object]]:
    """``(key, value in A, value in B)`` of every config key that differs; ``"<absent>"`` if missing."""
    configs = []
    for run in (Path(run_a), Path(run_b)):
        path = RunPaths(run).config if run.is_dir() else run
        if not path.is_file():
            raise FileNotFoundError(f"{run}: no config.yml; pass a run folder (fold<K>/) or its config.yml")
        configs.append(_flat(_read_yaml(path)))
    a, b = configs
    keys = list(a) + [k for k in b if k not in a]
    absent = "<absent>"
    return [(k, a.get(k, absent), b.get(k, absent)) for k in keys if a.get(k, absent) != b.get(k, absent)]


def _cell(value, column: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if column == "wall_s" else f"{value:.4f}"
    return str(value)


def format_table(rows: list[dict], columns=COLUMNS) -> str:
    """An aligned text table, one line per row."""
    cells = [[_cell(r[c], c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    return "\n".join(lines)


def format_diff(diffs: list[tuple[str, object, object]], run_a, run_b) -> str:
    if not diffs:
        return f"{run_a} and {run_b} have the same config"
    rows = [{"key": k, "A": json.dumps(a), "B": json.dumps(b)} for k, a, b in diffs]
    return f"A: {run_a}\nB: {run_b}\n" + format_table(rows, ("key", "A", "B"))


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
