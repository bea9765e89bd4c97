"""``steel-defect demo --data-dir DIR --holdout K``: the four quarters of a real folder's
labelled frames are disjoint, cover every frame, and each trains on the other three."""

from __future__ import annotations

import pytest

from steel_defect.cli import build_parser
from steel_defect.data.annotations import read_annotations
from steel_defect.demo import HOLDOUT_PARTS, _holdout_real


def test_the_four_holdout_quarters_partition_the_labelled_frames(tiny_synth, tmp_path):
    data = tiny_synth / "data"
    every = set(read_annotations(data / "train.csv").image_ids)
    tested = []
    for part in range(HOLDOUT_PARTS):
        work = tmp_path / f"holdout{part}"
        work.mkdir()
        train_csv, _, test_ids = _holdout_real(data, work, seed=0, part=part)
        train_ids = set(read_annotations(train_csv).image_ids)
        assert test_ids and set(test_ids) == set(read_annotations(work / "test_truth.csv").image_ids)
        assert train_ids.isdisjoint(test_ids) and train_ids | set(test_ids) == every
        tested += test_ids
    assert sorted(tested) == sorted(every)  # every frame is tested exactly once


def test_a_holdout_outside_the_four_quarters_is_refused(tiny_synth, tmp_path):
    with pytest.raises(ValueError, match="holdout part 4"):
        _holdout_real(tiny_synth / "data", tmp_path, seed=0, part=4)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--holdout", "4"])
    assert build_parser().parse_args(["demo", "--holdout", "3"]).holdout == 3


def test_a_variant_segmenter_config_must_exist_before_anything_is_written(tmp_path):
    from steel_defect.demo import run_demo

    work = tmp_path / "demo"
    with pytest.raises(FileNotFoundError, match=r"nope\.yml"):
        run_demo(work_dir=work, recipe="real", seg_config=tmp_path / "nope.yml")
    assert not work.exists()
    args = build_parser().parse_args(["demo", "--seg-config", "configs/real/unet_effnet_lite0_fullres.yml"])
    assert args.seg_config == "configs/real/unet_effnet_lite0_fullres.yml"


def test_no_test_frame_reaches_the_unlabelled_term_or_a_pseudo_round(tiny_synth, tmp_path):
    """A held-out score counts only if neither the semi-supervised term nor pseudo labels saw the
    scored frames: a folder holding one of them is refused before anything trains."""
    from steel_defect.demo import refuse_scored_frames, run_demo

    data = tiny_synth / "data"
    semi = f"train.semi={{name: fixmatch, unlabelled: {data / 'train_images'}}}"
    with pytest.raises(ValueError, match=r"train\.semi\.unlabelled .* holds \d+ of the test frames"):
        run_demo(data, tmp_path / "semi", recipe="real", holdout=1, opts=[semi])
    with pytest.raises(ValueError, match=r"--pseudo-images .* holds \d+ of the test frames"):
        run_demo(data, tmp_path / "pseudo", recipe="real", holdout=1, pseudo_images=data / "train_images")
    for work in ("semi", "pseudo"):
        assert not (tmp_path / work / "folds.csv").exists() and not (tmp_path / work / "seg").exists()
    test_ids = read_annotations(tmp_path / "semi" / "test_truth.csv").image_ids
    others = tmp_path / "others"
    others.mkdir()
    for name in sorted(set(read_annotations(data / "train.csv").image_ids) - set(test_ids))[:2]:
        (others / name).write_bytes((data / "train_images" / name).read_bytes())
    refuse_scored_frames(test_ids, {"train.semi.unlabelled": others, "--pseudo-images": None})
    (others / test_ids[0]).write_bytes((data / "train_images" / test_ids[0]).read_bytes())
    with pytest.raises(ValueError, match=test_ids[0].replace(".", r"\.")):
        refuse_scored_frames(test_ids, {"train.semi.unlabelled": others})


def test_the_summary_names_the_classes_the_model_has_not_learnt():
    """A class switched off because its out-of-fold maps never reach the lowest threshold on
    its defects is named, with its frames and highest peak; one switched off by the margin,
    or one with no defect frame, is not."""
    from steel_defect.demo import format_summary
    from steel_defect.inference.oof import unlearnt_classes

    def entry(disabled, n, peak):
        signal = {"defect_images": n, "peak_on_defects": peak, "reaches_threshold": n > 0 and peak >= 0.3}
        return {"disabled": disabled, "signal": {**signal, "lowest_threshold": 0.3}}

    classes = {"1": entry(True, 11, 0.06), "2": entry(True, 4, 0.45), "3": entry(False, 24, 1.0)}
    classes["4"] = entry(True, 0, None)
    unlearnt = unlearnt_classes(classes)
    assert unlearnt == {"1": {"defect_images": 11, "peak_on_defects": 0.06, "lowest_threshold": 0.3}}
    per_class = {c: 0.8 for c in "1234"}
    summary = {"test_images": 14, "mean_dice": 0.8, "empty_baseline": 0.79, "per_class": per_class}
    oof = {"images": 40, "mean_dice": 0.8, "empty": 0.79, "unlearnt": unlearnt}
    summary |= {"empty_per_class": per_class, "out_of_fold": oof, "timings": {}}
    summary |= {k: k for k in ("submission", "test_truth", "report", "postprocessing", "serve", "predict")}
    text = format_summary(summary)
    assert "never reach 0.30 on their defects): class 1 (11 frames, highest 0.06)" in text
    assert "steel-defect label" in text
    assert "never reach" not in format_summary({**summary, "out_of_fold": {**oof, "unlearnt": {}}})
