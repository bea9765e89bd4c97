"""Post-processing on hand-made maps: threshold, components, min area, gate, YAML."""

import numpy as np
import pytest

from steel_defect.inference.postprocess import (
    NEVER,
    ClassParams,
    PostProcessing,
    binarize,
    postprocess,
    reduced_size,
    remove_small_components,
    uint8_threshold,
)


def _params(**first) -> PostProcessing:
    """Given params for class 1, defaults for the others."""
    return PostProcessing((ClassParams(**first), ClassParams(), ClassParams(), ClassParams()))


def test_threshold_only():
    probs = np.zeros((4, 2, 3))
    probs[0] = [[0.1, 0.5, 0.7], [0.49, 0.51, 1.0]]
    out = postprocess(probs, _params(threshold=0.5))
    assert out.dtype == np.uint8 and out.shape == (4, 2, 3)
    np.testing.assert_array_equal(out[0], [[0, 1, 1], [0, 1, 1]])  # p >= threshold
    assert out[1:].sum() == 0


def _three_components() -> np.ndarray:
    mask = np.zeros((10, 12), bool)
    mask[0, 0] = True  # size 1
    for k in range(5):  # size 5: a diagonal, one component only with 8-connectivity
        mask[2 + k, 2 + k] = True
    mask[0:4, 7:12] = True  # size 20
    return mask


def test_component_removal_keeps_only_large_and_uses_8_connectivity():
    mask = _three_components()
    assert mask.sum() == 26
    kept = remove_small_components(mask, 6)
    expected = np.zeros_like(mask)
    expected[0:4, 7:12] = True
    np.testing.assert_array_equal(kept, expected)
    # the diagonal (5 pixels) survives min_size 5 as one component, the single pixel does not
    assert remove_small_components(mask.astype(np.uint8), 5).sum() == 25
    np.testing.assert_array_equal(remove_small_components(mask, 0), mask)


def test_min_area_empties_small_masks():
    probs = np.zeros((4, 10, 12))
    probs[0][_three_components()] = 0.9
    # after removing the 1-pixel component 25 pixels remain
    assert postprocess(probs, _params(min_component=2, min_area=25))[0].sum() == 25
    assert postprocess(probs, _params(min_component=2, min_area=26))[0].sum() == 0
    assert postprocess(probs, _params(min_area=26))[0].sum() == 26


def test_gate_empties_class_below_classifier_threshold():
    probs = np.full((4, 3, 3), 0.9)
    params = PostProcessing(tuple(ClassParams(cls_threshold=0.5) for _ in range(4)))
    out = postprocess(probs, params, np.array([0.2, 0.5, 0.49, 0.8]))
    assert out.sum(axis=(1, 2)).tolist() == [0, 9, 0, 9]
    assert postprocess(probs, params).sum() == 36  # no classifier output: no gating
    ungated = postprocess(probs, PostProcessing(), np.zeros(4))
    assert ungated.sum() == 36  # cls_threshold None: never gated


def test_top_gate_needs_a_confident_pixel_before_the_low_threshold_paints():
    probs = np.zeros((4, 3, 3))
    probs[:, :, :2] = 0.4  # faint area ...
    probs[1, 1, 1] = probs[3, 1, 1] = 0.75  # ... with a confident core on classes 2 and 4
    params = PostProcessing(tuple(ClassParams(threshold=0.3, top_threshold=0.7) for _ in range(4)))
    out = postprocess(probs, params)
    assert out.sum(axis=(1, 2)).tolist() == [0, 6, 0, 6]  # the core lets the whole area through
    quantised = np.rint(probs * 255).astype(np.uint8)
    np.testing.assert_array_equal(postprocess(quantised, params), out)
    assert postprocess(probs, _params(threshold=0.3)).sum(axis=(1, 2))[0] == 6  # None: no gate
    at_max = _params(threshold=0.3, top_threshold=0.4)  # reached exactly: kept
    assert postprocess(probs, at_max).sum(axis=(1, 2))[0] == 6


def test_uint8_rule_is_u_over_255_at_least_threshold():
    assert uint8_threshold(0.5) == 128  # 127.5 -> 128, exactly p >= 0.5 after rounding
    assert uint8_threshold(0.2) == 51  # 51 / 255 == 0.2 despite 0.2 * 255 = 51.00000000000001
    assert uint8_threshold(0.3) == 77
    assert uint8_threshold(0.0) == 0 and uint8_threshold(1.0) == 255
    u = np.array([50, 51, 127, 128], np.uint8)
    np.testing.assert_array_equal(binarize(u, 0.2), [False, True, True, True])
    np.testing.assert_array_equal(binarize(u, 0.5), [False, False, False, True])


def test_float_and_uint8_inputs_agree_away_from_the_boundary():
    rng = np.random.default_rng(0)
    probs = rng.random((4, 32, 48))
    thresholds = (0.3, 0.45, 0.5, 0.72)
    for i, t in enumerate(thresholds):  # keep every pixel more than one step from its threshold
        near = np.abs(probs[i] - t) <= 1 / 255
        probs[i][near] = t + 2 / 255
    params = PostProcessing(tuple(ClassParams(t, 3, 10) for t in thresholds))
    as_uint8 = np.rint(probs * 255).astype(np.uint8)
    expected = postprocess(probs, params)
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(postprocess(as_uint8, params), expected)


def test_yaml_round_trip(tmp_path):
    params = PostProcessing(
        (
            ClassParams(0.55, 600, 800, 0.5),
            ClassParams(np.float64(0.6), np.int64(100)),
            ClassParams(),
            ClassParams(0.4, 0, 2000, None, 0.8),
        )
    )
    path = tmp_path / "sub" / "postprocess.yml"
    params.save(path)
    assert PostProcessing.load(path) == params
    assert "min_component: 600" in path.read_text()
    assert PostProcessing.from_dict(params.to_dict()) == params


def test_missing_classes_get_defaults_and_string_keys_work():
    params = PostProcessing.from_dict({"classes": {"3": {"threshold": 0.7}}})
    assert params.classes[2] == ClassParams(threshold=0.7)
    assert params.classes[0] == params.classes[1] == params.classes[3] == ClassParams()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"classes": {5: {}}}, ["5", "[1, 2, 3, 4]"]),
        ({"classes": {1: {"treshold": 0.5}}}, ["treshold", "classes.1", "threshold"]),
        ({"classes": {2: {"threshold": 1.5}}}, ["classes.2", "threshold", "1.5"]),
        ({"classes": {2: {"min_area": -1}}}, ["min_area", "-1"]),
        ({"classes": {2: {"min_component": 2.5}}}, ["min_component", "2.5"]),
        ({"classes": {4: {"cls_threshold": "high"}}}, ["cls_threshold", "high"]),
        ({"class": {}}, ["class", "classes"]),
    ],
)
def test_bad_values_name_the_key(data, words):
    with pytest.raises(ValueError) as err:
        PostProcessing.from_dict(data)
    for word in words:
        assert word in str(err.value)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yml"):
        PostProcessing.load(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("classes: {1: [unclosed\n")
    with pytest.raises(ValueError, match=r"bad\.yml.*YAML"):
        PostProcessing.load(bad)
    wrong = tmp_path / "wrong.yml"
    wrong.write_text("classes:\n  7: {}\n")
    with pytest.raises(ValueError, match=r"wrong\.yml.*unknown class key 7"):
        PostProcessing.load(wrong)


def test_reduced_size_divides_by_the_area_factor_rounding_up():
    assert [reduced_size(m, 4) for m in (0, 1, 16, 17, 600, 2000)] == [0, 1, 1, 2, 38, 125]
    assert reduced_size(600, 1) == 600
    with pytest.raises(ValueError, match="whole number"):
        reduced_size(600, 0)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(4, H, W\)"):
        postprocess(np.zeros((3, 2, 2)), PostProcessing())
    with pytest.raises(ValueError, match=r"\(4,\)"):
        postprocess(np.zeros((4, 2, 2)), PostProcessing(), np.zeros(3))
    with pytest.raises(TypeError, match="uint8"):
        postprocess(np.zeros((4, 2, 2), np.int32), PostProcessing())


def test_a_class_is_switched_off_when_min_area_exceeds_a_frame():
    assert NEVER == 256 * 1600 + 1
    assert ClassParams(0.5, 0, NEVER).disabled
    assert not ClassParams(0.5, 0, 256 * 1600).disabled  # a full-frame defect still passes
