"""The cv2/numpy Resize and Normalize give exactly albumentations' arrays on full-size frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from steel_defect.constants import IMAGE_SHAPE
from steel_defect.data.eval_transforms import EvalPipeline, build_eval_transforms
from steel_defect.data.synth import generate_frame
from steel_defect.data.transforms import build_transforms

RESIZE = {"name": "Resize", "params": {"height": 128, "width": 800}}
SPECS = {
    "normalize": [{"name": "Normalize"}],
    "resize-normalize": [RESIZE, {"name": "Normalize"}],
    "half-means": [{"name": "Normalize", "params": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}],
    "scalar-mean": [{"name": "Normalize", "params": {"mean": 0.4, "std": 0.2, "max_pixel_value": 200}}],
    "upscale-cubic": [
        {"name": "Resize", "params": {"height": 300, "width": 1700, "interpolation": cv2.INTER_CUBIC}},
        {"name": "Normalize", "params": {"p": 1}},
    ],
    "area": [{"name": "Resize", "params": {"height": 64, "width": 400, "interpolation": cv2.INTER_AREA}}],
    # Normalize first: the resize then runs on float32 and Normalize takes its float path.
    "normalize-resize": [{"name": "Normalize"}, RESIZE],
    "same-size": [{"name": "Resize", "params": {"height": 256, "width": 1600}}, {"name": "Normalize"}],
}


def _frames() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    grey, _ = generate_frame(rng, defect_free=False)  # a synthetic steel frame, (256, 1600)
    noise = rng.integers(0, 256, (*IMAGE_SHAPE, 3), dtype=np.uint8)  # every byte value, every channel
    return {
        "rgb-noise": noise,
        "rgb-steel": np.dstack([grey, grey // 2, 255 - grey]),
        "one-channel": grey[:, :, None],
        "float": noise.astype(np.float32) / 3.0,  # what an earlier float step would hand on
    }


@pytest.mark.parametrize("spec_name", SPECS)
def test_same_arrays_as_albumentations(spec_name):
    specs = SPECS[spec_name]
    fast = build_eval_transforms(specs)
    reference = build_transforms(specs)
    assert isinstance(fast, EvalPipeline)  # built without albumentations
    for frame_name, frame in _frames().items():
        got = fast(image=frame.copy())["image"]
        want = reference(image=frame.copy())["image"]
        assert got.dtype == want.dtype and got.shape == want.shape, (frame_name, got.shape, want.shape)
        # Bit-identical, not merely close: the same cv2 calls and float32 operations.
        assert np.array_equal(got, want), (frame_name, float(np.abs(got - want).max()))


def test_other_normalization_falls_back_to_albumentations():
    specs = [{"name": "Normalize", "params": {"normalization": "image"}}]
    pipeline = build_eval_transforms(specs)
    assert not isinstance(pipeline, EvalPipeline)
    frame = _frames()["rgb-noise"]
    assert np.array_equal(pipeline(image=frame)["image"], build_transforms(specs)(image=frame)["image"])


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "HorizontalFlip", "params": {"p": 1}},
        {"name": "RandomCrop", "params": {"height": 128, "width": 256}},
    ],
)
def test_transforms_that_move_pixels_are_refused(spec):
    with pytest.raises(
        ValueError, match=f"m.pth: transforms.valid: validation transform {spec['name']} moves"
    ):
        build_eval_transforms([spec, {"name": "Normalize"}], "m.pth: transforms.valid")


def test_bad_values_get_albumentations_error_with_key_path():
    with pytest.raises(ValueError, match=r"transforms\.valid\[0\]\.params"):
        build_eval_transforms([{"name": "Resize", "params": {"height": -3, "width": 800}}])
