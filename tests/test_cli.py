"""The command line end to end on a small synthetic set: synth -> split -> validate/evaluate."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from steel_defect.cli import main
from tests.conftest import REPO


@pytest.fixture
def synth_dir(tmp_path):
    out = tmp_path / "data"
    assert main(["synth", "--out", str(out), "--n", "24", "--seed", "3"]) == 0
    return out


def test_split_folds_script_writes_folds_and_config(synth_dir, tmp_path, capsys):
    work = tmp_path / "work"
    capsys.readouterr()
    code = subprocess.run(
        [
            sys.executable,
            str(REPO / "split_folds.py"),
            "--config",
            str(REPO / "configs/demo/synth_seg.yml"),
            "--opts",
            f"paths.data_dir={synth_dir}",
            f"paths.work_dir={work}",
            "folds.n_splits=3",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert code.returncode == 0, code.stderr
    folds = pd.read_csv(work / "folds.csv")
    train_ids = pd.read_csv(synth_dir / "train.csv").ImageId_ClassId.str.rsplit("_", n=1).str[0].unique()
    assert sorted(folds.ImageId) == sorted(train_ids)  # every training image exactly once
    assert folds.ImageId.is_unique and set(folds.fold) == {0, 1, 2}
    saved = yaml.safe_load((work / "split_config.yml").read_text())
    assert saved["folds"]["n_splits"] == 3 and saved["paths"]["data_dir"] == str(synth_dir)


def test_split_reports_missing_input_by_key(tmp_path, capsys):
    code = main(
        [
            "split",
            "--config",
            str(REPO / "configs/demo/synth_seg.yml"),
            "--opts",
            f"paths.data_dir={tmp_path}/absent",
        ]
    )
    assert code == 2
    assert "'paths.train_csv' points to" in capsys.readouterr().err


def test_truth_scores_one_and_empty_scores_the_defect_free_share(synth_dir, capsys):
    truth = synth_dir / "test_truth.csv"
    assert main(["evaluate", "--pred", str(truth), "--truth", str(truth), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mean_dice"] == 1.0
    empty = synth_dir / "empty.csv"
    text = truth.read_text().splitlines()
    empty.write_text("\n".join([text[0]] + [line.split(",")[0] + "," for line in text[1:]]) + "\n")
    assert (
        main(["validate", str(empty), "--sample-submission", str(synth_dir / "sample_submission.csv")]) == 0
    )
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(empty), "--truth", str(truth), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = [line.split(",") for line in text[1:]]
    expected = sum(not rle for _, rle in rows) / len(rows)  # Dice 1 exactly where the truth is empty
    assert result["mean_dice"] == pytest.approx(expected)


def test_config_docs_lists_every_key_and_every_registrys_names(capsys):
    from steel_defect.losses import LOSSES
    from steel_defect.models.build import ARCHITECTURES

    assert main(["config", "--docs"]) == 0
    out = capsys.readouterr().out
    for key in ("`paths.work_dir`", "`data.batch_size`", "`folds.n_splits`", "`train.epochs`"):
        assert key in out
    rows = {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| `")}
    # each registry's names, read from the registries: nothing written out twice
    assert {f"`{name}`" for name in (*LOSSES, *ARCHITECTURES)} <= rows
    for name in ("combo", "lovasz_softmax", "unetplusplus", "fixmatch", "mean_teacher", "openvino", "int8"):
        assert f"`{name}`" in rows
    assert "`tu-tf_efficientnet_lite0`" in rows and "`balanced`" in rows and "`radam`" in rows


def test_version_is_the_package_version(capsys):
    from steel_defect import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"steel-defect {__version__}"
