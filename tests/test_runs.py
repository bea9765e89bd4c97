"""The runs leaderboard on two tiny trainings, its config diff, and the curves a run draws."""

from __future__ import annotations

import csv
import io
import json

import matplotlib.pyplot as plt
import pytest

from steel_defect.cli import main
from steel_defect.config import load_config
from steel_defect.constants import CLASS_COLORS
from steel_defect.data.folds import split_folds
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.inference.oof import search_thresholds
from steel_defect.training.artifacts import curves_figure
from steel_defect.training.checkpoint import load_checkpoint
from steel_defect.training.runner import train
from tests.conftest import REPO, SMALL_OPTS


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Runs a (threshold search done) and b (other lr and seed), one short epoch each."""
    root = tmp_path_factory.mktemp("runs")
    write_synthetic_dataset(root / "data", n=20, seed=4, test_fraction=0.3)
    common = [
        f"paths.data_dir={root / 'data'}",
        f"paths.folds_csv={root / 'folds.csv'}",
        *SMALL_OPTS,
        "train.epochs=1",
        "train.max_train_batches=1",
    ]
    a = load_config(REPO / "configs/demo/synth_seg.yml", [*common, f"paths.work_dir={root / 'exp/a'}"])
    b = load_config(
        REPO / "configs/demo/synth_seg.yml",
        [*common, f"paths.work_dir={root / 'exp/b'}", "optimizer.lr=0.001", "seed=7"],
    )
    split_folds(a)
    train(a, fold=0)
    train(b, fold=0)
    search = search_thresholds(a, out=root / "exp/a/postprocessing.yml")
    return {"root": root, "a": root / "exp/a/fold0", "b": root / "exp/b/fold0", "search": search}


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["runs", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_leaderboard_lists_both_runs_from_their_files(two_runs, capsys):
    code, out, _ = _run(capsys, "--json", two_runs["root"] / "exp")
    assert code == 0
    rows = json.loads(out)
    assert [r["run"] for r in rows] == [str(two_runs["a"]), str(two_runs["b"])]  # scored run first
    a, b = rows
    assert (a["name"], b["name"]) == ("exp/a", "exp/b")
    assert a["task"] == "seg" and a["model"] == "unet/resnet18" and a["fold"] == 0 and a["epochs"] == "1/1"
    assert a["oof_dice"] == two_runs["search"]["out_of_fold"]["mean_dice"] and b["oof_dice"] is None
    for row, run in ((a, two_runs["a"]), (b, two_runs["b"])):
        history = json.loads((run / "history.json").read_text())
        best = load_checkpoint(run / "checkpoints" / "best.pth")
        assert (row["best_epoch"], row["monitor"]) == (best["epoch"], "iou")
        assert row["best"] == best["metrics"]["valid"]["iou"]
        assert row["wall_s"] == round(history[0]["seconds"], 1)
        assert row["date"] == history[0]["finished"][:16].replace("T", " ")

    code, table, _ = _run(capsys, two_runs["root"] / "exp")
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["run", "name", "task", "model"] and len(lines) == 3
    assert lines[1].index("seg") == lines[0].index("task")  # aligned under its header
    code, text, _ = _run(capsys, "--csv", two_runs["root"] / "exp")
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [r["name"] for r in parsed] == ["exp/a", "exp/b"] and parsed[0]["best_epoch"] == "1"
    # a fold folder on its own is a run too, and a run under two given folders is listed once
    code, out, _ = _run(capsys, "--json", two_runs["b"], two_runs["root"] / "exp")
    assert [r["name"] for r in json.loads(out)] == ["exp/a", "b"]


def test_diff_shows_the_config_keys_that_differ(two_runs, capsys):
    code, out, _ = _run(capsys, "--diff", two_runs["a"], two_runs["b"])
    assert code == 0
    keys = {line.split()[0] for line in out.splitlines()[3:]}
    assert keys == {"seed", "paths.work_dir", "optimizer.lr"}
    lr_line = next(line for line in out.splitlines() if line.startswith("optimizer.lr"))
    assert lr_line.split()[1:] == ["0.003", "0.001"]
    code, out, _ = _run(capsys, "--diff", two_runs["a"], two_runs["a"])
    assert "have the same config" in out


def test_missing_or_empty_folders_are_clear_errors(tmp_path, capsys):
    code, _, err = _run(capsys, tmp_path / "nowhere")
    assert code == 2 and "nowhere is not a folder" in err
    code, _, err = _run(capsys, tmp_path)
    assert code == 2 and "no runs under" in err and "fold<K>/" in err
    code, _, err = _run(capsys, "--diff", tmp_path, tmp_path)
    assert code == 2 and "no config.yml" in err


def test_curves_draw_learning_rate_and_per_class_metrics(two_runs):
    history = json.loads((two_runs["a"] / "history.json").read_text())
    history = [*history, {**history[0], "epoch": 2, "train": {**history[0]["train"], "lr/all": 1e-4}}]
    fig = curves_figure(history, "iou")
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    lr = axes["learning rate"].get_lines()
    assert [list(line.get_ydata()) for line in lr] == [[history[0]["train"]["lr/all"], 1e-4]]
    for name in ("dice", "iou"):
        lines = axes[f"validation {name} per class"].get_lines()
        assert [line.get_label() for line in lines] == ["1", "2", "3", "4"]
        assert [line.get_color() for line in lines] == [CLASS_COLORS[c] for c in (1, 2, 3, 4)]
        assert list(lines[2].get_ydata()) == [h["valid"][f"{name}_3"] for h in history]
    plt.close(fig)
