"""The run layout has one owner: every file name below is written out once, here and in layout.py."""

from pathlib import Path

import pytest

from steel_defect.config import layout
from steel_defect.config.layout import RunPaths


def test_run_paths_spell_out_the_fold_folder():
    run = RunPaths.of("work/x", 3)
    assert run.run_dir == Path("work/x/fold3")
    assert run.fold == 3
    assert run.config == Path("work/x/fold3/config.yml")
    assert run.best == Path("work/x/fold3/checkpoints/best.pth")
    assert run.last == Path("work/x/fold3/checkpoints/last.pth")
    assert run.swa == Path("work/x/fold3/checkpoints/swa.pth")
    assert run.epoch(7) == Path("work/x/fold3/checkpoints/epoch_007.pth")
    assert run.snapshot(2) == Path("work/x/fold3/checkpoints/snapshot_2.pth")
    assert run.history == Path("work/x/fold3/history.json")
    assert run.curves == Path("work/x/fold3/curves.png")
    assert run.logs == Path("work/x/fold3/logs")


def test_work_dir_files_and_the_search_outputs_beside_its_yaml():
    assert layout.folds_csv("w") == Path("w/folds.csv")
    post = layout.postprocessing("w")
    assert post == Path("w/postprocessing.yml")
    assert layout.search_report(post) == Path("w/postprocessing.report.json")
    assert layout.oof_scores(post) == Path("w/postprocessing.oof.csv")
    assert layout.demo_summary("w") == Path("w/summary.json")
    assert layout.best_checkpoints("w", [0, 2]) == [
        Path("w/fold0/checkpoints/best.pth"),
        Path("w/fold2/checkpoints/best.pth"),
    ]


def test_fold_folder_names():
    assert RunPaths.is_run_dir("w/fold12")
    assert not RunPaths.is_run_dir("w/fold")
    assert not RunPaths.is_run_dir("w/folds.csv")
    with pytest.raises(ValueError, match="fold<K>"):
        _ = RunPaths(Path("w/foldx")).fold


def test_trained_folds_are_those_with_a_best_checkpoint_in_fold_order(tmp_path):
    for fold in (10, 2):
        RunPaths.of(tmp_path, fold).best.parent.mkdir(parents=True)
        RunPaths.of(tmp_path, fold).best.write_bytes(b"")
    RunPaths.of(tmp_path, 5).checkpoints.mkdir(parents=True)  # started, nothing saved yet
    (tmp_path / "foldx" / "checkpoints").mkdir(parents=True)
    (tmp_path / "foldx" / "checkpoints" / "best.pth").write_bytes(b"")
    found = layout.trained_folds(tmp_path)
    assert list(found) == [2, 10]
    assert found[10] == tmp_path / "fold10" / "checkpoints" / "best.pth"
