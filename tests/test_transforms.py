"""Each registered transform does what it should to image and mask, and bad specs fail clearly."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations' import would call the network

import numpy as np
import pytest

from steel_defect.config.errors import ComponentError
from steel_defect.data.transforms import TRANSFORMS, build_transforms

H, W = 64, 400


def gradient_image(height: int = H, width: int = W) -> np.ndarray:
    """uint8 (H, W, 3) whose pixels are all distinct: (row, col % 256, col // 256)."""
    rows, cols = np.mgrid[:height, :width]
    return np.dstack([rows, cols % 256, cols // 256]).astype(np.uint8)


def locate(pixel: np.ndarray) -> tuple[int, int]:
    """(row, col) in :func:`gradient_image` of one of its pixels."""
    return int(pixel[0]), int(pixel[1]) + 256 * int(pixel[2])


def random_mask(seed: int = 0, height: int = H, width: int = W) -> np.ndarray:
    """uint8 0/1 (H, W, 4) with a different random pattern per class."""
    return np.random.default_rng(seed).integers(0, 2, (height, width, 4), dtype=np.uint8)


def run(specs: list[dict], image: np.ndarray, mask: np.ndarray, seed: int = 0) -> tuple:
    pipeline = build_transforms(specs)
    pipeline.set_random_seed(seed)
    out = pipeline(image=image, mask=mask)
    return out["image"], out["mask"]


def test_horizontal_flip_mirrors_image_and_mask():
    image, mask = gradient_image(), random_mask()
    out_image, out_mask = run([{"name": "HorizontalFlip", "params": {"p": 1}}], image, mask)
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_mask, mask[:, ::-1])


def test_vertical_flip_mirrors_image_and_mask():
    image, mask = gradient_image(), random_mask()
    out_image, out_mask = run([{"name": "VerticalFlip", "params": {"p": 1}}], image, mask)
    np.testing.assert_array_equal(out_image, image[::-1])
    np.testing.assert_array_equal(out_mask, mask[::-1])


def test_coarse_dropout_fills_holes_in_image_only():
    image, mask = np.full((H, W, 3), 200, np.uint8), random_mask()
    params = {
        "num_holes_range": [2, 2],
        "hole_height_range": [8, 8],
        "hole_width_range": [10, 10],
        "fill": 17,
        "p": 1,
    }
    out_image, out_mask = run([{"name": "CoarseDropout", "params": params}], image, mask)
    filled = (out_image == 17).all(axis=-1)
    # Two 8x10 holes: 80 pixels when they do not overlap, at most 160.
    assert 80 <= filled.sum() <= 160
    assert set(np.unique(out_image)) == {17, 200}
    np.testing.assert_array_equal(out_mask, mask)


def test_coarse_dropout_rejects_fill_mask():
    spec = {"name": "CoarseDropout", "params": {"fill_mask": 0}}
    with pytest.raises(
        ComponentError, match=r"'transforms\[0\]\.params\.fill_mask': cannot be set: .*unchanged"
    ):
        build_transforms([spec])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_crop_cuts_image_and_mask_at_the_same_place(seed):
    image, mask = gradient_image(), random_mask()
    spec = {"name": "RandomCrop", "params": {"height": 32, "width": 100}}
    out_image, out_mask = run([spec], image, mask, seed)
    assert out_image.shape == (32, 100, 3) and out_mask.shape == (32, 100, 4)
    top, left = locate(out_image[0, 0])
    np.testing.assert_array_equal(out_image, image[top : top + 32, left : left + 100])
    np.testing.assert_array_equal(out_mask, mask[top : top + 32, left : left + 100])


@pytest.mark.parametrize("seed", range(6))
def test_non_empty_crop_keeps_a_defect_in_view(seed):
    image = gradient_image()
    mask = np.zeros((H, W, 4), np.uint8)
    mask[40:44, 330:336, 2] = 1  # one small class-3 defect near the right edge
    spec = {"name": "CropNonEmptyMaskIfExists", "params": {"height": 32, "width": 100}}
    out_image, out_mask = run([spec], image, mask, seed)
    assert out_mask[..., 2].any()  # a plain random crop of this size misses it about 6 times in 7
    top, left = locate(out_image[0, 0])
    np.testing.assert_array_equal(out_mask, mask[top : top + 32, left : left + 100])
    # without a defect it is an ordinary random crop
    assert run([spec], image, np.zeros_like(mask), seed)[0].shape == (32, 100, 3)


def test_center_crop_takes_the_middle():
    image, mask = gradient_image(), random_mask()
    out_image, out_mask = run([{"name": "CenterCrop", "params": {"height": 32, "width": 100}}], image, mask)
    np.testing.assert_array_equal(out_image, image[16:48, 150:250])
    np.testing.assert_array_equal(out_mask, mask[16:48, 150:250])


@pytest.mark.parametrize(
    "spec",
    [
        # Crop 32..64 rows with the frame's width/height ratio, scale back to 64 x 400.
        {
            "name": "RandomSizedCrop",
            "params": {"min_max_height": [32, 64], "size": [64, 400], "w2h_ratio": 6.25},
        },
        {
            "name": "RandomResizedCrop",
            "params": {"size": [32, 200], "scale": [0.3, 1.0], "ratio": [4.0, 8.0]},
        },
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_crop_scale_yields_configured_size(spec, seed):
    image, mask = gradient_image(), random_mask()
    out_image, out_mask = run([spec], image, mask, seed)
    height, width = spec["params"]["size"]
    assert out_image.shape == (height, width, 3)
    assert out_mask.shape == (height, width, 4)
    assert set(np.unique(out_mask)) <= {0, 1}  # nearest-neighbour keeps masks binary


def test_resize_scales_image_and_mask():
    image = gradient_image()
    mask = np.zeros((H, W, 4), np.uint8)
    mask[:, : W // 2, 2] = 1  # left half of class 3
    out_image, out_mask = run([{"name": "Resize", "params": {"height": 32, "width": 200}}], image, mask)
    assert out_image.shape == (32, 200, 3)
    expected = np.zeros((32, 200, 4), np.uint8)
    expected[:, :100, 2] = 1
    np.testing.assert_array_equal(out_mask, expected)


def test_affine_translation_moves_image_and_mask_alike():
    image, mask = gradient_image(), random_mask()
    spec = {"name": "Affine", "params": {"translate_px": {"x": 10, "y": 0}, "p": 1}}
    out_image, out_mask = run([spec], image, mask)
    np.testing.assert_array_equal(out_image[:, 10:], image[:, :-10])
    np.testing.assert_array_equal(out_mask[:, 10:], mask[:, :-10])
    assert (out_mask[:, :10] == 0).all()


def test_normalize_maps_the_mean_to_zero():
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    image = np.broadcast_to(np.round(mean * 255), (H, W, 3)).astype(np.uint8).copy()
    image[0, 0] = 255
    mask = random_mask()
    out_image, out_mask = run([{"name": "Normalize", "params": {}}], image, mask)
    assert out_image.dtype == np.float32
    np.testing.assert_allclose(out_image[1:], 0, atol=0.01)  # uint8 rounding of the mean
    np.testing.assert_allclose(out_image[0, 0], (1 - mean) / std, rtol=1e-5)
    np.testing.assert_array_equal(out_mask, mask)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"name": "GaussNoise", "params": {"p": 1}}, None),
        # brightness_by_max: 100 + 0.2 * 255 = 151
        (
            {
                "name": "RandomBrightnessContrast",
                "params": {"brightness_limit": [0.2, 0.2], "contrast_limit": [0, 0], "p": 1},
            },
            151,
        ),
        # gamma 1.5: 255 * (100 / 255) ** 1.5 = 62.0
        ({"name": "RandomGamma", "params": {"gamma_limit": [150, 150], "p": 1}}, 62),
    ],
)
def test_pixel_transforms_change_image_not_mask(spec, expected):
    image, mask = np.full((H, W, 3), 100, np.uint8), random_mask()
    out_image, out_mask = run([spec], image, mask)
    if expected is None:
        assert np.abs(out_image.astype(int) - 100).mean() > 5
    else:
        assert (out_image == expected).all()
    np.testing.assert_array_equal(out_mask, mask)


def test_one_of_applies_exactly_one():
    image, mask = gradient_image(), random_mask()
    spec = {
        "name": "OneOf",
        "params": {"p": 1},
        "transforms": [
            {"name": "HorizontalFlip", "params": {"p": 1}},
            {"name": "VerticalFlip", "params": {"p": 1}},
        ],
    }
    chosen = set()
    for seed in range(12):
        out_image, out_mask = run([spec], image, mask, seed)
        if np.array_equal(out_image, image[:, ::-1]):
            chosen.add("h")
            np.testing.assert_array_equal(out_mask, mask[:, ::-1])
        elif np.array_equal(out_image, image[::-1]):
            chosen.add("v")
            np.testing.assert_array_equal(out_mask, mask[::-1])
        else:
            pytest.fail("OneOf applied neither or both flips")
    assert chosen == {"h", "v"}


# Parameters that make each registered transform build; a new registration needs an entry.
EXAMPLE_PARAMS = {
    "HorizontalFlip": {},
    "VerticalFlip": {},
    "CoarseDropout": {
        "num_holes_range": [1, 4],
        "hole_height_range": [16, 64],
        "hole_width_range": [16, 128],
    },
    "RandomCrop": {"height": 32, "width": 32},
    "CenterCrop": {"height": 32, "width": 32},
    "RandomSizedCrop": {"min_max_height": [32, 64], "size": [64, 400], "w2h_ratio": 6.25},
    "RandomResizedCrop": {"size": [64, 400]},
    "Resize": {"height": 32, "width": 200},
    "Affine": {"scale": [0.9, 1.1]},
    "Normalize": {},
    "CropNonEmptyMaskIfExists": {"height": 32, "width": 100},
    "GaussNoise": {},
    "RandomBrightnessContrast": {},
    "RandomGamma": {},
}


# Registered transforms that need more than parameters to run, each with its own tests.
NEEDS_DATA = {"CopyPaste": "a defect bank cut from the training fold (tests/test_copy_paste.py)"}


def test_every_registered_transform_builds():
    assert set(EXAMPLE_PARAMS) | {"OneOf"} | set(NEEDS_DATA) == set(TRANSFORMS)
    image, mask = gradient_image(), random_mask()
    for name, params in EXAMPLE_PARAMS.items():
        out_image, out_mask = run([{"name": name, "params": {**params, "p": 1}}], image, mask)
        assert out_image.shape[:2] == out_mask.shape[:2], name


def test_readme_example_runs():
    specs = [
        {"name": "HorizontalFlip", "params": {"p": 0.5}},
        {
            "name": "CoarseDropout",
            "params": {
                "num_holes_range": [1, 4],
                "hole_height_range": [16, 64],
                "hole_width_range": [16, 128],
                "fill": 0,
                "p": 0.5,
            },
        },
        {
            "name": "OneOf",
            "params": {"p": 0.5},
            "transforms": [{"name": "RandomGamma"}, {"name": "RandomBrightnessContrast"}],
        },
        {"name": "Normalize", "params": {}},
    ]
    out_image, out_mask = run(specs, gradient_image(), random_mask())
    assert out_image.dtype == np.float32 and out_image.shape == (H, W, 3)
    assert out_mask.shape == (H, W, 4)


def test_empty_list_is_identity():
    image, mask = gradient_image(), random_mask()
    for specs in (None, []):
        out_image, out_mask = run(specs, image, mask)
        np.testing.assert_array_equal(out_image, image)
        np.testing.assert_array_equal(out_mask, mask)


def test_stale_argument_name_is_rejected_with_key_path():
    specs = [
        {"name": "HorizontalFlip"},
        {"name": "CoarseDropout", "params": {"max_holes": 8, "p": 0.5}},
    ]
    with pytest.raises(ComponentError) as info:
        build_transforms(specs, key_path="transforms.train")
    message = str(info.value)
    assert message.startswith("config key 'transforms.train[1].params.max_holes': not a parameter")
    assert "num_holes_range" in message and "hole_height_range" in message


def test_unknown_name_lists_valid_names():
    with pytest.raises(ComponentError) as info:
        build_transforms([{"name": "Cutout", "params": {}}], key_path="transforms.train")
    message = str(info.value)
    assert message.startswith("config key 'transforms.train[0].name': unknown transform 'Cutout'")
    for name in TRANSFORMS:
        assert name in message


def test_bad_value_names_the_field_and_keeps_the_original_message():
    spec = {"name": "CoarseDropout", "params": {"num_holes_range": [4, 1]}}
    with pytest.raises(ComponentError) as info:
        build_transforms([spec], key_path="transforms.valid")
    message = str(info.value)
    assert message.startswith("config key 'transforms.valid[0].params.num_holes_range':")
    assert "First value should be less than the second value" in message


@pytest.mark.parametrize(
    ("specs", "pattern"),
    [
        (
            [{"name": "HorizontalFlip", "parms": {}}],
            r"\[0\]\.parms': not a parameter \(did you mean 'params'\?\)",
        ),
        ([{"params": {}}], r"\[0\]\.name': no transform named"),
        ([{"name": "HorizontalFlip", "params": [0.5]}], r"\[0\]\.params': must be a mapping"),
        ([{"name": "HorizontalFlip", "transforms": []}], r"\[0\]\.transforms': only OneOf"),
        ([{"name": "OneOf"}], r"\[0\]\.transforms': OneOf needs a list"),
        (
            [{"name": "OneOf", "transforms": [{"name": "RandomGamma", "params": {"gama": 1}}]}],
            r"transforms\[0\]\.transforms\[0\]\.params\.gama': not a parameter",
        ),
        (
            [{"name": "OneOf", "params": {"transforms": []}, "transforms": []}],
            r"params\.transforms': cannot be set: give",
        ),
        ({"name": "HorizontalFlip"}, r"^config key 'transforms': expected a list"),
        (["HorizontalFlip"], r"\[0\]': expected a mapping"),
    ],
)
def test_malformed_specs_are_rejected(specs, pattern):
    with pytest.raises(ComponentError, match=pattern):
        build_transforms(specs)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "params", [{}, {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}, {"mean": 0.3, "std": 0.2, "p": 1.0}]
)
def test_a_plain_normalize_runs_one_lut_with_albumentations_values(channels, params):
    import albumentations as A

    from steel_defect.data.transforms import LutNormalize

    image = np.random.default_rng(channels).integers(0, 256, (256, 1600, channels), dtype=np.uint8)
    pipeline = build_transforms([{"name": "Normalize", "params": params}])
    assert isinstance(pipeline.transforms[0], LutNormalize)
    want = A.Compose([A.Normalize(**params)])(image=image)["image"]
    got = pipeline(image=image)["image"]
    assert got.dtype == want.dtype == np.float32 and np.array_equal(got, want)
    # anything else is albumentations' own Normalize
    other = build_transforms([{"name": "Normalize", "params": {"normalization": "min_max"}}])
    assert type(other.transforms[0]) is A.Normalize
