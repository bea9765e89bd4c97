"""The clean-frame gate: tuned out of fold, stored in the tuned pipeline, applied by the predictor.

A coarse pass of the pipeline's segmenters calls a frame clean when every class's peak stays
below its threshold; the thresholds are tuned on out-of-fold peaks so that no frame the pipeline
earns Dice on is skipped, beyond at most one (frame, class) pair (steel_defect/inference/gate.py).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from steel_defect.cli import main
from steel_defect.config import ConfigError, load_config
from steel_defect.constants import CLASS_IDS
from steel_defect.data.folds import read_folds, split_folds, split_ids
from steel_defect.data.images import read_image
from steel_defect.data.synth import write_synthetic_dataset
from steel_defect.inference.gate import NEVER, GateSpec, coarse_shape, tune_gate
from steel_defect.inference.oof import (
    collect_oof,
    pair_dice,
    search_thresholds,
    tune_clean_gate,
    write_oof_scores,
)
from steel_defect.inference.pipeline import PipelineError, build_predictor, read_tuned, save_spec
from steel_defect.inference.postprocess import ClassParams, PostProcessing
from steel_defect.inference.predictor import Predictor
from tests.conftest import REPO, SMALL_OPTS

TINY_TRAIN = ["train.epochs=1", "train.max_train_batches=1", "train.max_valid_batches=1"]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """Two fold segmenters trained one batch each (maps around 0.35, so a low threshold paints),
    their out-of-fold search (gate included) and their out-of-fold predictions."""
    root = tmp_path_factory.mktemp("gate")
    write_synthetic_dataset(root / "data", n=12, seed=4, test_fraction=0.2)
    opts = [
        f"paths.data_dir={root / 'data'}",
        f"paths.folds_csv={root / 'folds.csv'}",
        f"paths.work_dir={root / 'seg'}",
        "model.output_prior=0.35",
        "inference.backend=torch",
        *SMALL_OPTS,
        *TINY_TRAIN,
    ]
    seg = load_config(REPO / "configs/demo/synth_seg.yml", opts)
    split_folds(seg)
    for fold in (0, 1):
        train_fold(seg, fold)
    summary = search_thresholds(seg, None, root / "postprocessing.yml", record=False)
    return {"root": root, "cfg": seg, "summary": summary, "oof": collect_oof(seg)}


def train_fold(cfg, fold):
    from steel_defect.training.runner import train

    train(cfg, fold=fold)


def _frames(tuned, n):
    ids = tuned["oof"]["ids"][:n]
    return [read_image(Path(tuned["cfg"].paths.train_images) / i) for i in ids]


# -- the tuning, on hand-made peaks --------------------------------------------------------------


def test_the_threshold_rises_past_one_pair_to_skip_more_frames():
    """Class 1: the pipeline earns 0.8 on frame 1 (peak level 40) and 0.3 on frame 2 (level 60);
    nothing else is found anywhere. Without a budget the threshold is 40 (frames 0, 3, 4, 5
    skipped); a budget of one pair lets it rise to 60 and give frame 1's 0.8 up, not to NEVER
    (0.8 + 0.3 > 1)."""
    levels = np.array([[10, 5, 5, 5], [40, 5, 5, 5], [60, 5, 5, 5], [5, 5, 5, 5], [3, 9, 9, 9], [2, 0, 0, 0]])
    empty = np.ones((6, 4))
    empty[[1, 2], 0] = 0.0
    dice = empty.copy()
    dice[1, 0], dice[2, 0] = 0.8, 0.3
    strict = tune_gate(levels, dice, empty, scale=2, max_lost_pairs=0.0)
    assert strict.spec.levels.tolist() == [40, NEVER, NEVER, NEVER]
    assert strict.skip.tolist() == [True, False, False, True, True, True]
    assert strict.report["lost_pairs"] == 0.0 and strict.report["sacrificed"] == []
    one = tune_gate(levels, dice, empty, scale=2, max_lost_pairs=1.0)
    assert one.spec.levels.tolist() == [60, NEVER, NEVER, NEVER]
    assert one.skip.tolist() == [True, True, False, True, True, True]
    assert one.report["lost_pairs"] == pytest.approx(0.8)
    assert one.report["sacrificed"] == [{"row": 1, "class": 1, "dice_lost": pytest.approx(0.8)}]
    assert one.report["skipped"] == 5 and one.report["marked_frames"] == 2
    assert one.spec.thresholds[0] == 60 / 255 and one.spec.thresholds[1:] == (None, None, None)


def test_a_false_positive_is_no_loss_and_a_class_the_classifier_closes_holds_nothing():
    """Frame 0: the pipeline paints class 3 where there is none (Dice 0 against an empty mask's 1):
    skipping it gains a pair. Frame 1: class 2 is found (0.9) but its peak is the lowest of all;
    once the classifier gates class 2 off there, nothing is earned on it and it may be skipped."""
    levels = np.array([[0, 0, 200, 0], [0, 1, 0, 0], [0, 90, 0, 0]])
    empty = np.ones((3, 4))
    empty[1, 1] = empty[2, 1] = 0.0
    dice = empty.copy()
    dice[0, 2], dice[1, 1], dice[2, 1] = 0.0, 0.9, 0.5
    gate = tune_gate(levels, dice, empty, scale=2, max_lost_pairs=0.0)
    assert gate.spec.levels.tolist() == [NEVER, 1, NEVER, NEVER]
    assert gate.skip.tolist() == [True, False, False]
    assert gate.report["dice_change_pairs"] == pytest.approx(1.0)  # the false positive cleared
    absent = np.zeros((3, 4), bool)
    absent[1, 1] = True
    closed = tune_gate(levels, dice, empty, scale=2, absent=absent, max_lost_pairs=0.0)
    assert closed.spec.levels.tolist() == [NEVER, 90, NEVER, NEVER]
    assert closed.skip.tolist() == [True, True, False]


pairs = st.integers(2, 30).flatmap(
    lambda n: st.tuples(
        arrays(np.uint8, (n, 4)),
        arrays(np.float64, (n, 4), elements=st.sampled_from([0.0, 0.0, 0.0, 0.2, 0.5, 0.9, 1.0])),
        st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    )
)


@settings(max_examples=120, deadline=None, derandomize=True, database=None)
@given(pairs)
def test_the_gate_keeps_every_marked_frame_but_the_pairs_it_gave_up(case):
    levels, dice, budget = case
    empty = np.zeros_like(dice)  # every pair holds its class: what the pipeline finds is what skipping loses
    gate = tune_gate(levels, dice, empty, scale=2, max_lost_pairs=budget)
    given_up = {(e["row"], e["class"]) for e in gate.report["sacrificed"]}
    assert sum(e["dice_lost"] for e in gate.report["sacrificed"]) <= budget + 1e-9
    held = (levels >= gate.spec.levels).any(axis=1)  # some class holds the frame for the full pass
    for i, c in zip(*np.nonzero(dice > 0), strict=True):
        if (int(i), CLASS_IDS[c]) not in given_up:
            assert held[i] and not gate.skip[i]
    zero = tune_gate(levels, dice, empty, scale=2, max_lost_pairs=0.0)
    assert gate.report["skipped"] >= zero.report["skipped"]
    assert gate.skip.tolist() == (levels < gate.spec.levels).all(axis=1).tolist()


# -- tuned out of fold, recorded, applied -------------------------------------------------------


def _recorded(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_gate_never_skips_a_frame_its_out_of_fold_tuning_marked(tuned, tmp_path):
    """Tuned as the search tunes it, on a post-processing that paints (threshold 0.3 on maps
    around 0.35, so the pipeline earns Dice on the frames with defects), then read back from
    the files the code wrote: the spec's thresholds against the .oof.csv's coarse peaks."""
    oof = tuned["oof"]
    post = PostProcessing(tuple(ClassParams(threshold=0.3) for _ in CLASS_IDS))
    gate = tune_clean_gate(oof, post, max_lost_pairs=1.0)
    spec_path = tmp_path / "postprocessing.yml"
    _, spec = read_tuned(tuned["root"] / "postprocessing.yml")
    networks = [Predictor([m.path], backend="torch").segmenters[0] for m in spec.models]
    split = (spec.folds_path, spec.folds_sha256)
    save_spec(spec_path, post, networks, spec.tta, spec.gate, 1, *split, clean_gate=gate.spec)
    rows = _recorded(write_oof_scores(tmp_path / "postprocessing.oof.csv", oof, gate))
    stored = read_tuned(spec_path)[1].clean_gate
    assert stored == gate.spec and stored.scale == 2
    given_up = {(e["image"], e["class"]) for e in gate.report["sacrificed"]}
    marked = [(r, c) for r in rows for c in CLASS_IDS if r[f"marked_{c}"] == "1"]
    assert len(marked) >= 3, "the fixture must give the gate defects to keep"
    for row, c in marked:
        if (row["ImageId"], c) in given_up:
            continue
        peaks = [float(row[f"gate_{k}"]) for k in CLASS_IDS]  # level / 255, exactly
        assert any(t is not None and p >= t for p, t in zip(peaks, stored.thresholds, strict=True))
        assert row["gate_skips"] == "0"
    assert sum(e["dice_lost"] for e in gate.report["sacrificed"]) <= 1.0
    for row in rows:  # what the csv says was skipped is what the stored thresholds skip
        below = all(
            t is None or round(float(row[f"gate_{c}"]) * 255) < round(t * 255)
            for c, t in zip(CLASS_IDS, stored.thresholds, strict=True)
        )
        assert row["gate_skips"] == str(int(below))
    # the recorded peaks are those of the fold's own models, which never saw the frame
    table = read_folds(tuned["cfg"].paths.folds_csv)
    for fold in (0, 1):
        ids = split_ids(table, fold)[1]
        frames = [read_image(Path(tuned["cfg"].paths.train_images) / i) for i in ids]
        levels = Predictor([m.path for m in spec.of_fold(fold)], backend="torch").coarse_levels(frames, 2)
        by_id = {r["ImageId"]: r for r in rows}
        recorded = [[round(float(by_id[i][f"gate_{c}"]) * 255) for c in CLASS_IDS] for i in ids]
        np.testing.assert_array_equal(levels, recorded)


def test_the_search_reports_the_gate_and_scores_pair_by_pair_what_it_reports(tuned):
    summary, oof = tuned["summary"], tuned["oof"]
    post, spec = read_tuned(tuned["root"] / "postprocessing.yml")
    dice, _ = pair_dice(oof, post)
    assert dice.mean() == pytest.approx(summary["out_of_fold"]["mean_dice"], abs=1e-12)
    report = summary["clean_gate"]
    assert report["frames"] == len(oof["ids"]) and report["scale"] == spec.clean_gate.scale == 2
    assert report["lost_pairs"] <= 1.0 and 0 <= report["skipped"] <= report["frames"]
    assert list(_recorded(Path(summary["scores"]))[0])[-1] == "gate_skips"


def test_a_gated_frame_gets_empty_masks_without_the_segmenter(tuned):
    """Class 1's threshold just above the lowest frame's coarse peak, the others never open: that
    frame (and any as low) is skipped, the rest run the full pass in one batch, and their masks
    and maps are exactly those of the pipeline without the gate."""
    _, spec = read_tuned(tuned["root"] / "postprocessing.yml")
    frames = _frames(tuned, 4)
    checkpoints = [m.path for m in spec.of_fold(0)]
    post = PostProcessing(tuple(ClassParams(threshold=0.3) for _ in CLASS_IDS))
    plain = Predictor(checkpoints, post, tta=spec.tta, backend="torch")
    levels = plain.coarse_levels(frames, 2)[:, 0]
    assert levels.min() < levels.max(), "the frames must differ in their coarse peaks"
    gate = GateSpec(2, (float(levels.min() + 1) / 255, None, None, None))
    gated = Predictor(checkpoints, post, tta=spec.tta, backend="torch", clean_gate=gate)
    results, reference = gated.predict(frames), plain.predict(frames)
    skipped = levels <= levels.min()
    assert gated.stats["segmented"] == int((~skipped).sum())
    assert gated.stats["skipped_clean"] == int(skipped.sum())
    assert gated.stats["frames"] == 4 and gated.stats["gate_frames"] == 4
    for result, ref, skip in zip(results, reference, skipped, strict=True):
        if skip:
            assert result.probs is None and result.levels is None
            assert result.masks.shape == ref.masks.shape and not result.masks.any()
        else:
            np.testing.assert_array_equal(result.masks, ref.masks)
            np.testing.assert_array_equal(result.levels, ref.levels)
    before = gated.stats["segmented"]
    gated.predict(frames, skip_gated=False)  # the pages need every map: nothing is skipped
    assert gated.stats["segmented"] == before + 4


def test_the_coarse_pass_on_onnx_runs_its_own_export_and_agrees_with_torch(tuned):
    checkpoint = read_tuned(tuned["root"] / "postprocessing.yml")[1].of_fold(0)[0].path
    frames = _frames(tuned, 3)
    torch_levels = Predictor([checkpoint], backend="torch").coarse_levels(frames, 2)
    onnx = Predictor([checkpoint], backend="onnx")
    onnx_levels = onnx.coarse_levels(frames, 2)
    assert np.abs(onnx_levels.astype(int) - torch_levels).max() <= 1
    assert checkpoint.with_name(f"{checkpoint.stem}.32x192.onnx").is_file()  # 64x384 halved
    assert coarse_shape((64, 384), 2) == (32, 192) and coarse_shape((128, 800), 2) == (64, 384)


def test_predict_runs_the_spec_gate_and_no_clean_gate_turns_it_off(tuned, tmp_path, capsys):
    data = yaml.safe_load((tuned["root"] / "postprocessing.yml").read_text())
    data["clean_gate"] = {"scale": 2, "thresholds": {c: None for c in CLASS_IDS}}  # every frame is clean
    post = tuned["root"] / "closed.yml"
    post.write_text(yaml.safe_dump(data))
    images = tuned["root"] / "data/test_images"
    argv = ["predict", "--postprocessing", str(post), "--images", str(images), "--backend", "torch"]
    assert main([*argv, "--out", str(tmp_path / "a.csv")]) == 0
    n = len(list(images.iterdir()))
    assert f"segmenter skipped on {n} (" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "b.csv"), "--no-clean-gate"]) == 0
    assert "segmenter skipped" not in capsys.readouterr().err
    config = tuned["root"] / "seg/fold0/config.yml"
    off = ["--config", str(config), "--opts", "inference.clean_gate=false"]
    assert main([*argv, "--out", str(tmp_path / "c.csv"), *off]) == 0
    assert "segmenter skipped" not in capsys.readouterr().err


def test_a_spec_without_a_gate_loads_and_runs_every_frame(tuned, tmp_path):
    data = yaml.safe_load((tuned["root"] / "postprocessing.yml").read_text())
    del data["clean_gate"]
    path = tuned["root"] / "old.yml"
    path.write_text(yaml.safe_dump(data))
    predictor = build_predictor(path, backend="torch")
    assert read_tuned(path)[1].clean_gate is None and predictor.clean_gate is None
    predictor.predict(_frames(tuned, 2))
    assert predictor.stats["segmented"] == 2 and predictor.stats["gate_frames"] == 0


OPEN = dict.fromkeys(CLASS_IDS, 0.1)


@pytest.mark.parametrize(
    ("gate", "needle"),
    [
        (
            {"scale": 1, "thresholds": OPEN},
            r"clean_gate\.scale must be a whole factor >= 2",
        ),
        ({"scale": "2", "thresholds": OPEN}, r"clean_gate\.scale must be"),
        (
            {"scale": 2, "thresholds": {1: 0.1, 2: 0.1, 3: 0.1}},
            r"clean_gate\.thresholds has classes \['1', '2', '3'\]",
        ),
        (
            {"scale": 2, "thresholds": {**OPEN, 3: 1.5}},
            r"clean_gate\.thresholds\.3 must be a",
        ),
        (
            {"scale": 2, "thresholds": OPEN, "skip": 1},
            r"unknown key\(s\) \['skip'\] in clean_gate",
        ),
        ({"thresholds": OPEN}, r"missing \['scale'\] in clean_gate"),
        ([2, 0.1], r"clean_gate must be a mapping"),
    ],
)
def test_a_malformed_gate_fails_naming_the_key(tuned, tmp_path, gate, needle):
    data = yaml.safe_load((tuned["root"] / "postprocessing.yml").read_text())
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump({**data, "clean_gate": gate}))
    with pytest.raises(PipelineError, match=rf"bad\.yml: .*{needle}"):
        build_predictor(path, backend="torch")


@pytest.mark.parametrize(
    ("opt", "needle"),
    [
        ("inference.gate_scale=1", "inference.gate_scale"),
        ("inference.gate_max_lost_pairs=-1", "inference.gate_max_lost_pairs"),
        ("inference.clean_gate=maybe", "inference.clean_gate"),
    ],
)
def test_bad_gate_keys_fail_at_load_naming_them(opt, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(REPO / "configs/demo/synth_seg.yml", [opt])
