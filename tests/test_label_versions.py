"""The labelling loop: `labels train` on a labels database gives a tuned, versioned, promoted model
that `labels queue`, `label` and `serve --labels-db` then use; `labels versions`, `labels promote`.

Real SQLite files, real training (the synthetic recipe, every fold, one epoch of one batch at an
eighth of the frame), real threshold searches; the cancel test pauses a real `labels train`
process in its second fold (steel_defect/pause.py) and sends it SIGTERM as the page does.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steel_defect.cli import build_parser, main
from steel_defect.cli.common import label_predictor
from steel_defect.cli.predict import served_model
from steel_defect.config import layout, load_config
from steel_defect.constants import CLASS_IDS
from steel_defect.data.annotations import read_annotations
from steel_defect.data.folds import read_folds
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.inference.pipeline import read_tuned
from steel_defect.inference.verdict import model_version
from steel_defect.labels.store import LabelStore
from steel_defect.labels.train import train_on_labels
from tests.conftest import REPO

SIZE = "{name: Resize, params: {height: 32, width: 192}}"
NORM = "{name: Normalize, params: {mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}}"
TINY = [
    *(f"transforms.{side}=[{SIZE}, {NORM}]" for side in ("train", "valid")),
    "folds.n_splits=2",
    "train.max_train_batches=1",
    "train.max_valid_batches=1",
    "inference.tta=[]",
    "inference.backend=torch",
    "inference.gate_scale=null",
]
TRAIN = ["--recipe", "synthetic", "--epochs", "1", "--opts", *TINY]


def _database(root: Path) -> tuple[Path, Path]:
    """9 labelled synthetic frames (imported from train.csv) and 3 unlabelled ones in one folder."""
    write_synthetic_dataset(root / "data", n=12, seed=3, test_fraction=0.25)
    images = root / "data" / "train_images"
    unlabelled = sorted((root / "data" / "test_images").iterdir())
    for path in unlabelled:
        shutil.copy(path, images / path.name)
    db = root / "labels.sqlite"
    assert (
        main(["labels", "import", "--db", str(db), str(root / "data/train.csv"), "--images", str(images)])
        == 0
    )
    with LabelStore.open(db) as store:  # as `label` lists its folder
        store.add_frames([(path.name, 1600, 256) for path in unlabelled])
    return db, images


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One `labels train --training-id N` on a fresh database of imported frames."""
    root = tmp_path_factory.mktemp("loop")
    db, images = _database(root)
    with LabelStore.open(db) as store:
        training_id = store.start_training(os.getpid(), "test", None)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["labels", "train", "--db", str(db), "--training-id", str(training_id), *TRAIN])
    assert rc == 0, err.getvalue()[-3000:]
    return {
        "root": root,
        "db": db,
        "images": images,
        "id": training_id,
        "out": out.getvalue(),
        "err": err.getvalue(),
    }


@pytest.fixture(scope="module")
def second(trained):
    """A second training on the same labels, in-process."""
    with LabelStore.open(trained["db"]) as store:
        return train_on_labels(store, recipe="synthetic", opts=TINY, epochs=1)


def _pair_dice(spec: str) -> dict[str, list[float]]:
    with open(layout.oof_scores(spec), newline="") as handle:
        return {r["ImageId"]: [float(r[f"dice_{c}"]) for c in CLASS_IDS] for r in csv.DictReader(handle)}


def _models(predictor) -> list[Path]:
    return sorted(Path(n.path).resolve() for n in predictor.segmenters + predictor.classifiers)


def _spec_models(spec: Path) -> list[Path]:
    return sorted(Path(p).resolve() for p in read_tuned(spec)[1].checkpoints)


def test_a_fresh_database_trains_to_a_promoted_v1_with_its_counts_and_oof_dice_beside_empty(trained):
    labels = read_annotations(trained["root"] / "data/train.csv")
    ids = list(labels.image_ids)
    with LabelStore.open(trained["db"]) as store:
        (v1,) = store.versions()
        assert v1["name"] == "v1" and v1["promoted"] and v1["recipe"] == "synthetic"
        assert store.promotions()[0]["reason"] == "first version"
        assert v1["labels_digest"] == store.labels_digest()
    # frames per class, counted by hand from the imported CSV
    per_class = {str(c): sum(bool(labels.rles(i)[c - 1]) for i in ids) for c in CLASS_IDS}
    assert v1["counts"] == {
        "frames": 9,
        "defect_free": sum(not any(labels.rles(i)) for i in ids),
        "per_class": per_class,
    }
    # no frame held back: every labelled frame is in the split and scored out of fold once
    oof = v1["out_of_fold"]
    assert sorted(read_folds(Path(v1["detail"]["work_dir"]) / "folds.csv").ImageId) == sorted(ids)
    assert oof["images"] == 9
    # an empty mask scores 1 on a frame without the class, 0 on one with it
    for c in CLASS_IDS:
        assert oof["empty_per_class"][str(c)] == pytest.approx(1 - per_class[str(c)] / 9)
    assert oof["empty"] == pytest.approx(sum(oof["empty_per_class"].values()) / 4)
    # the per-frame Dice the next version is compared on adds up to the recorded score
    pairs = _pair_dice(v1["spec"])
    assert sorted(pairs) == sorted(ids)
    assert sum(map(sum, pairs.values())) / 36 == pytest.approx(oof["mean_dice"])
    for c in oof["unlearnt"]:  # a class not learnt is off: it scores what empty masks score
        assert oof["per_class"][c] == oof["empty_per_class"][c]
    assert "v1:" in trained["out"] and "promoted: first version" in trained["out"]
    assert f"{oof['mean_dice']:.4f} vs {oof['empty']:.4f} empty" in trained["out"]


def test_the_training_row_follows_every_fold_and_ends_done_with_the_version(trained):
    with LabelStore.open(trained["db"]) as store:
        row = store.training(trained["id"])
    assert row["state"] == "done" and row["version"] == "v1" and row["error"] is None
    assert row["progress"]["stage"] == "record" and row["progress"]["fraction"] == 1.0
    lines = trained["err"]
    for network in ("classifier", "segmenter"):
        for fold in (1, 2):
            assert f"train: {network} fold {fold}/2 epoch 1/1" in lines
    assert lines.index("split:") < lines.index("train: ") < lines.index("search:") < lines.index("record:")


def test_a_second_training_is_compared_on_the_same_frames_and_promoted_only_if_not_worse(trained, second):
    with LabelStore.open(trained["db"]) as store:
        v1, v2 = store.versions()
        promoted = store.promoted()["name"]
    old, new = _pair_dice(v1["spec"]), _pair_dice(v2["spec"])
    by_hand = {k: sum(map(sum, d.values())) / (4 * len(d)) for k, d in (("old", old), ("new", new))}
    comparison = second["comparison"]
    assert comparison["against"] == "v1" and comparison["frames"] == 9
    assert comparison["new"] == pytest.approx(by_hand["new"])
    assert comparison["promoted"] == pytest.approx(by_hand["old"])
    better = by_hand["new"] >= by_hand["old"] - 1e-12
    assert second["promoted"] == better and promoted == ("v2" if better else "v1")
    assert v2["detail"]["comparison"] == comparison and v2["spec"] != v1["spec"]


def test_promote_rolls_back_to_an_earlier_version_and_versions_json_lists_them(trained, second, capsys):
    db = str(trained["db"])
    assert main(["labels", "promote", "--db", db, "v2"]) == 0
    assert main(["labels", "promote", "--db", db, "v1"]) == 0  # the rollback
    capsys.readouterr()
    assert main(["labels", "versions", "--db", db, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["name"], v["promoted"]) for v in listed["versions"]] == [("v1", True), ("v2", False)]
    assert [p["version"] for p in listed["promotions"]][-2:] == ["v2", "v1"]
    assert main(["labels", "versions", "--db", db]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].startswith("* v1") and table[2].startswith("  v2")
    assert main(["labels", "promote", "--db", db, "v7"]) == 2
    assert "no model version 'v7'" in capsys.readouterr().err


def test_queue_label_and_serve_use_the_promoted_version_unless_a_pipeline_is_named(trained, second, capsys):
    db = str(trained["db"])
    assert main(["labels", "promote", "--db", db, "v2"]) == 0
    with LabelStore.open(db) as store:
        spec = Path(store.promoted()["spec"])
        v1_spec = Path(store.version("v1")["spec"])
        # label: the page's pre-labels come from the promoted version's pipeline
        label = ["label", "--images", str(trained["images"]), "--db", db, "--backend", "torch"]
        predictor = label_predictor(load_config(None, []), build_parser().parse_args(label), store)
        assert predictor is not None and _models(predictor) == _spec_models(spec)
        # an explicit --postprocessing still wins
        args = build_parser().parse_args([*label, "--postprocessing", str(v1_spec)])
        assert _models(label_predictor(load_config(None, []), args, store)) == _spec_models(v1_spec)
        assert _spec_models(v1_spec) != _spec_models(spec)
    # serve --labels-db: the promoted spec; --postprocessing wins there too
    args = build_parser().parse_args(["serve", "--labels-db", db])
    assert served_model(load_config(None, []), args) == (None, spec)
    args = build_parser().parse_args(["serve", "--labels-db", db, "--postprocessing", str(v1_spec)])
    assert served_model(load_config(None, []), args)[1] == v1_spec
    # labels queue with no --postprocessing scores the 3 unlabelled frames with the promoted model
    capsys.readouterr()
    assert main(["labels", "queue", "--db", db, "--backend", "torch"]) == 0
    with LabelStore.open(db) as store:
        queue = store.stats().queue
    assert queue["size"] == 3
    assert queue["model_version"] == model_version(predictor)


def test_too_few_labelled_frames_is_a_clear_error_and_records_nothing(tmp_path, capsys):
    write_synthetic_dataset(tmp_path / "data", n=4, seed=1, test_fraction=0.0)
    rows = (tmp_path / "data/train.csv").read_text().splitlines()
    (tmp_path / "one.csv").write_text("\n".join(rows[:5]) + "\n")  # the header and one frame
    db = tmp_path / "labels.sqlite"
    images = str(tmp_path / "data/train_images")
    assert main(["labels", "import", "--db", str(db), str(tmp_path / "one.csv"), "--images", images]) == 0
    capsys.readouterr()
    assert main(["labels", "train", "--db", str(db), *TRAIN]) == 2
    err = capsys.readouterr().err
    assert str(db) in err and "has 1 labelled frames" in err and "at least 2" in err
    with LabelStore.open(db) as store:
        assert store.versions() == [] and store.promoted() is None
        assert store.training()["state"] == "failed"  # and no training left running
    assert not (tmp_path / "labels.models").exists()


def test_sigterm_cancels_the_training_mid_fold_with_its_progress_and_no_version(tmp_path):
    db, _ = _database(tmp_path)
    with LabelStore.open(db) as store:
        training_id = store.start_training(None, "test", None)
    marker = tmp_path / "paused"
    env = {
        **os.environ,
        "STEEL_DEFECT_TEST_PAUSE_AT": "batch:train@2",  # the classifier's fold 1 done, in its fold 2
        "STEEL_DEFECT_TEST_PAUSE_FILE": str(marker),
        "NO_ALBUMENTATIONS_UPDATE": "1",
    }
    cmd = [sys.executable, "-m", "steel_defect.cli", "labels", "train", "--db", str(db)]
    process = subprocess.Popen(
        [*cmd, "--training-id", str(training_id), *TRAIN],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not marker.is_file():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"never reached the pause: {process.communicate()[1].decode()[-3000:]}")
        time.sleep(0.05)
    with LabelStore.open(db) as store:
        progress = store.training(training_id)["progress"]
    # the row says the classifier's first fold is done (epoch 1 of 1), the rest to come
    assert progress["stage"] == "train" and progress["network"] == "classifier"
    assert (progress["fold"], progress["folds"], progress["epoch"], progress["epochs"]) == (0, 2, 1, 1)
    assert 0 < progress["fraction"] < 1 and progress["eta_s"] > 0
    os.killpg(process.pid, signal.SIGTERM)  # the page's Cancel
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err.decode()[-3000:]
    assert b"cancelled: no version recorded" in err
    with LabelStore.open(db) as store:
        row = store.training(training_id)
        assert row["state"] == "cancelled" and row["version"] is None
        assert store.versions() == [] and store.promoted() is None
