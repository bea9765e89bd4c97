"""Properties over generated inputs (hypothesis): RLE round-trips any mask; the label and
submission readers and ``--opts`` fail only with their own error, naming a line or key; the
post-processing never adds a pixel when a parameter is raised.

Examples are derandomized (the same every run, so a failure reproduces) and few, so the file
stays within a few seconds of the default suite.
"""

from __future__ import annotations

import string

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from steel_defect.config import ConfigError, load_config
from steel_defect.data.annotations import LONG_HEADER, WIDE_HEADER, AnnotationError, read_annotations
from steel_defect.data.rle import RLEError, mask_to_rle, parse_rle, rle_to_mask, rles_to_hwc, rles_to_masks
from steel_defect.data.submission import SubmissionError, read_submission
from steel_defect.inference.postprocess import ClassParams, PostProcessing, postprocess

FAST = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

masks = st.tuples(st.integers(1, 24), st.integers(1, 24)).flatmap(lambda hw: arrays(np.bool_, hw))


@FAST
@given(masks)
def test_rle_round_trips_any_mask(mask):
    rle = mask_to_rle(mask)
    np.testing.assert_array_equal(rle_to_mask(rle, mask.shape), mask)
    starts, ends = parse_rle(rle, mask.size)  # what we write, we also accept
    assert int((ends - starts).sum()) == int(mask.sum())


@FAST
@given(
    st.tuples(st.integers(1, 24), st.integers(1, 24), st.integers(1, 4)).flatmap(
        lambda hwc: arrays(np.bool_, (hwc[2], hwc[0], hwc[1]))
    )
)
def test_channels_last_decoding_equals_decoding_then_transposing(stack):
    # sparse classes take the scatter path, classes over a quarter of the frame the dense one
    rles = [mask_to_rle(mask) for mask in stack]
    want = np.ascontiguousarray(rles_to_masks(rles, stack.shape[1:]).transpose(1, 2, 0))
    got = rles_to_hwc(rles, stack.shape[1:])
    assert got.flags.c_contiguous and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


@FAST
@given(st.text(alphabet=" 0123456789-+_x\t\n²١", max_size=40), st.integers(1, 500))
def test_parse_rle_raises_only_rle_errors(text, num_pixels):
    try:
        starts, ends = parse_rle(text, num_pixels)
    except RLEError:
        return
    assert (starts >= 0).all() and (ends <= num_pixels).all() and (starts < ends).all()


# Text near a label file: a real header most of the time, then cells, separators, quotes,
# line ends, a BOM and digits, where the corner cases live.
_CELLS = st.text(alphabet='ab._1234 ,"\r\n\ufeff\x00é', max_size=120)
_HEADERS = st.sampled_from([",".join(WIDE_HEADER), ",".join(LONG_HEADER), "", "\ufeffImageId"])
csv_texts = st.one_of(
    st.tuples(_HEADERS, _CELLS).map(lambda parts: parts[0] + "\n" + parts[1]),
    st.text(max_size=80),
)
csv_bytes = st.one_of(csv_texts.map(lambda t: t.encode()), st.binary(max_size=80))


@FAST
@given(csv_bytes)
def test_train_csv_readers_raise_only_annotation_errors_with_a_line(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("ann") / "train.csv"
    path.write_bytes(data)
    try:
        annotations = read_annotations(path)
    except AnnotationError as err:
        assert str(err).startswith(f"{path}, line "), str(err)
        return
    assert annotations.layout in ("wide", "long")


@FAST
@given(csv_bytes)
def test_submission_validator_raises_only_submission_errors_with_lines(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("sub") / "sub.csv"
    path.write_bytes(data)
    try:
        rows = read_submission(path)
    except SubmissionError as err:
        assert err.problems and all(p.startswith("line ") for p in err.problems), err.problems
        return
    assert all(len(rles) == 4 for rles in rows.values())


_KEYS = st.sampled_from(
    ["train.epochs", "data.batch_size", "model.name", "model.params", "paths.data_dir", "train", "x.y", ""]
)
_VALUES = st.one_of(
    st.sampled_from(
        ["2", "-1", "abc", "[1, 2]", "{a: 1}", "null", "1e9", "{", "!!python/none", "2001-12-14"]
    ),
    st.text(alphabet=string.printable, max_size=20),
    st.sampled_from([17, 600]).map(lambda n: "[" * n + "]" * n),  # 600 levels exhaust the recursion
)
overrides = st.lists(
    st.one_of(st.tuples(_KEYS, _VALUES).map("=".join), st.text(max_size=20)),
    min_size=1,
    max_size=3,
)


@FAST
@given(overrides)
def test_opts_parsing_raises_only_config_errors(opts):
    try:
        load_config(None, opts)
    except ConfigError as err:
        assert str(err)
        return


probability_maps = arrays(np.float32, (4, 6, 9), elements=st.floats(0, 1, width=32))
class_params = st.builds(
    ClassParams,
    threshold=st.floats(0, 1),
    min_component=st.integers(0, 30),
    min_area=st.integers(0, 40),
    cls_threshold=st.one_of(st.none(), st.floats(0, 1)),
)
raises = st.tuples(st.floats(0, 1), st.integers(0, 20), st.integers(0, 20), st.floats(0, 1))


def _raised(params: ClassParams, by: tuple[float, int, int, float]) -> ClassParams:
    gate = None if params.cls_threshold is None else min(1.0, params.cls_threshold + by[3])
    return ClassParams(
        min(1.0, params.threshold + by[0]), params.min_component + by[1], params.min_area + by[2], gate
    )


@FAST
@given(
    probability_maps,
    st.lists(class_params, min_size=4, max_size=4),
    st.lists(raises, min_size=4, max_size=4),
    arrays(np.float64, 4, elements=st.floats(0, 1)),
    st.booleans(),
)
def test_postprocessing_is_monotone_in_its_thresholds(probs, params, by, cls_probs, quantised):
    if quantised:  # the web app's maps: uint8 probability * 255
        probs = np.round(probs * 255).astype(np.uint8)
    low = PostProcessing(tuple(params))
    high = PostProcessing(tuple(_raised(p, b) for p, b in zip(params, by, strict=True)))
    masks_low = postprocess(probs, low, cls_probs)
    masks_high = postprocess(probs, high, cls_probs)
    assert not (masks_high & ~masks_low).any()  # stricter parameters never add a pixel
