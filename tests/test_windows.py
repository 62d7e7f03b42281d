"""Sliding windows, their merge and the bilinear resize (spec section 1)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_cass.engine._image import resized_size
from napari_cass.engine._windows import (
    bilinear_taps,
    resize_rows_band,
    resize_rows_band_channels_last,
    window_coords,
)


def test_windows_cover_the_image_with_edge_windows_moved_back():
    wins = window_coords(336, 504, 224, 112)
    assert len(wins) == 2 * 4  # the brief's 336 x 504 example has 8 crops
    cover = np.zeros((336, 504), int)
    for y1, y2, x1, x2 in wins:
        assert y2 - y1 == 224 and x2 - x1 == 224
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    assert wins[-1] == (112, 336, 280, 504)  # the last window ends at the edge


def test_image_smaller_than_a_crop_is_one_window():
    assert window_coords(100, 150, 224, 112) == [(0, 100, 0, 150)]
    assert window_coords(100, 400, 224, 112) == [(0, 100, 0, 224), (0, 100, 112, 336), (0, 100, 176, 400)]


def test_resized_size_follows_the_short_side_rule():
    assert resized_size(512, 512, 336) == (336, 336)
    assert resized_size(480, 640, 336) == (336, 448)
    assert resized_size(100, 5000, 336) == (41, 2048)  # long side capped at 2048


@pytest.mark.parametrize("shape,out", [((7, 9), (20, 31)), ((30, 40), (11, 13)), ((5, 5), (5, 5))])
def test_banded_resize_equals_interpolate(shape, out):
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(sum(shape) + sum(out)))
    # Bilinear output = a weighted mean of 4 inputs (weights sum to 1): the two paths differ
    # by a few float32 roundings of values |x| < ~5, i.e. < 4 * 1.2e-7 * 5 = 2.4e-6 < 1e-5.
    ref = F.interpolate(x[None], size=out, mode="bilinear", align_corners=False)[0]
    rows = bilinear_taps(out[0], shape[0])
    cols = bilinear_taps(out[1], shape[1])
    full = resize_rows_band(x, rows, cols)
    assert torch.allclose(full, ref, atol=1e-5)
    band = resize_rows_band(x, tuple(t[2:5] for t in rows), cols)
    assert torch.allclose(band, ref[:, 2:5], atol=1e-5)
    last = resize_rows_band_channels_last(x.permute(1, 2, 0).contiguous(), tuple(t[2:5] for t in rows), cols)
    assert torch.equal(last.permute(2, 0, 1), band)  # same taps, same arithmetic


def test_merge_windows_averages_overlaps_on_the_canvas():
    from napari_cass.engine._windows import merge_windows

    gen = torch.Generator().manual_seed(0)
    wins = window_coords(20, 30, 16, 8)  # 2 x 3 windows of 16 x 16, overlapping
    logits = torch.rand(len(wins), 2, 4, 4, generator=gen)
    out = merge_windows(logits, wins, (20, 30)).permute(2, 0, 1)  # returned channels last
    total = torch.zeros(2, 20, 30, dtype=torch.float64)
    count = torch.zeros(20, 30, dtype=torch.float64)
    for (y1, y2, x1, x2), lg in zip(wins, logits):
        total[:, y1:y2, x1:x2] += F.interpolate(lg[None].double(), size=(16, 16), mode="bilinear")[0]
        count[y1:y2, x1:x2] += 1
    assert count.min() >= 1 and count.max() == 6  # columns 14-16 are in all six windows
    # float32 sums of <= 6 values in [0, 1], then a division: a few ulps of 6
    assert torch.allclose(out.double(), total / count, atol=8 * 6 * 2.0**-24, rtol=0)
    whole = merge_windows(logits[:1], [(0, 20, 0, 30)], (20, 30))
    assert whole.shape == (20, 30, 2) and whole.is_contiguous()
    assert torch.equal(whole.permute(2, 0, 1), F.interpolate(logits[:1], size=(20, 30), mode="bilinear")[0])
