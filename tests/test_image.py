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


@pytest.mark.parametrize("shape,size", [((301, 157), (41, 60)), ((40, 30), (90, 70)), ((123, 77), (30, 200))])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_large_images_are_resized_a_band_of_rows_at_a_time(monkeypatch, shape, size, dtype):
    """Converting and shrinking along rows per band, then along columns, gives the one-call result.

    The antialiased bilinear filter is separable and PyTorch applies it one axis at a
    time, so the numbers are the same (bit-identical with torch 2.x); the bound allows
    float32 rounding of a different evaluation order: a few ulps of 255.
    """
    import napari_cass.engine._image as image_mod

    rng = np.random.default_rng(7)
    hi = {np.uint8: 255, np.uint16: 4095, np.float32: 1.0}[dtype]
    img = (rng.random((*shape, 3)) * hi).astype(dtype)
    t = torch.from_numpy(as_rgb_float(img)).permute(2, 0, 1)[None]
    ref = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    monkeypatch.setattr(image_mod, "_RESIZE_BAND_ELEMENTS", 3 * shape[1] * 9)  # bands of 9 rows
    out = resize_image(image_mod.load_rgb(img), size)
    assert out.shape == (3, *size) and out.dtype == torch.float32
    assert (out - ref).abs().max().item() <= 4 * 255 * 2.0**-24


def test_grey_and_single_channel_images_are_not_copied_three_times():
    from napari_cass.engine._image import load_rgb

    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = load_rgb(grey)
    assert rgb.shape == (3, 4, 3) and np.shares_memory(rgb.pixels, grey)
    assert np.array_equal(rgb.to_float(), np.repeat(grey[..., None], 3, -1).astype(np.float32))
    assert np.array_equal(load_rgb(grey[..., None]).rows(1, 2), rgb.rows(1, 2))
