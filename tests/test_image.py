"""Image validation and the resize of spec section 1."""

import numpy as np
import pytest
import torch

from napari_cass.engine._image import _opencv_linear_uint8, as_rgb_float, pad_pixels, padded_size, resize_image

from _parity_data import needs_parity_data, parity_dir  # noqa: F401 (fixture)


def test_accepted_images():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (10, 12), dtype=np.uint8)
    assert as_rgb_float(grey).shape == (10, 12, 3)
    rgba = rng.integers(0, 255, (10, 12, 4), dtype=np.uint8)
    assert np.array_equal(as_rgb_float(rgba), rgba[..., :3].astype(np.float32))
    u12 = np.array([[0, 1024], [2048, 4095]], np.uint16)  # 12-bit data in a uint16 image
    out12 = as_rgb_float(u12)
    assert out12.min() == 0 and out12.max() == pytest.approx(255.0)
    assert out12[1, 0, 0] == pytest.approx(2048 / 4095 * 255, rel=1e-5)
    f01 = np.full((4, 4, 3), 0.5)
    assert as_rgb_float(f01).max() == pytest.approx(127.5)
    wide = np.linspace(-3, 7, 16).reshape(4, 4)
    out = as_rgb_float(wide)
    assert out.min() == 0 and out.max() == pytest.approx(255.0)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((4, 4, 4, 3), np.uint8), "Unsupported image shape"),
        (np.zeros((4, 4, 5), np.uint8), "Unsupported image shape"),
        (np.zeros((1, 1, 3), np.uint8), "too small"),
        (np.zeros((0, 5), np.uint8), "too small"),
        (np.array([[np.nan, 1.0], [2.0, 3.0]]), "NaN"),
        (np.array([["a", "b"], ["c", "d"]]), "dtype"),
        (np.zeros((4, 4), bool), "dtype"),
        ("not an image", "Expected an image array"),
    ],
)
def test_bad_images_say_what_is_accepted(bad, match):
    with pytest.raises(ValueError, match=match) as err:
        as_rgb_float(bad)
    assert "uint8" in str(err.value)


@needs_parity_data
def test_opencv_linear_matches_the_reference_resize(parity_dir):
    data = np.load(parity_dir / "inputs_astronaut.npz")
    out = _opencv_linear_uint8(data["image_orig"], (336, 336))
    assert np.array_equal(out, data["image_resized"])


def test_default_resize_is_antialiased():
    # a 1-pixel checkerboard shrunk 3x: antialiasing averages it towards grey,
    # plain bilinear (the reference's OpenCV resize) samples single pixels and aliases
    img = (np.indices((48, 48)).sum(0) % 2 * 255).astype(np.float32)[..., None].repeat(3, -1)
    small = resize_image(img, (16, 16))
    assert small.std() < 60 and abs(small.mean().item() - 127.5) < 5
    aliased = resize_image(img, (16, 16), reference_quirks=True)
    assert aliased.std() > 120


def test_padding_only_touches_images_below_one_patch():
    assert padded_size(336, 504, 16) == (336, 504)  # ordinary images are not padded
    assert padded_size(16, 2048, 16) == (16, 2048)
    assert padded_size(8, 2048, 16) == (16, 2048)  # a 2 x 500 kymograph after the resize
    assert padded_size(2048, 2, 16) == (2048, 16)
    px = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(3, 2, 5)
    out = pad_pixels(px, (16, 7))
    assert out.shape == (3, 16, 7)
    assert torch.equal(out[:, :2, :5], px)  # the image is untouched, at the top left
    assert torch.equal(out[:, 2:, :5], px[:, 1:2].expand(-1, 14, -1))  # last row repeated
    assert torch.equal(out[:, :, 5:], out[:, :, 4:5].expand(-1, -1, 2))  # last column repeated
    assert pad_pixels(px, (2, 5)) is px
