"""The banded finishing step (labels + confidence straight from the low-resolution logits).

The engine never builds ``(classes, H, W)`` unless asked. These tests compare it with the
full-array path it replaced (resize all logits to H x W, x logit_scale, softmax, max over
synonyms, argmax, prob_thd), evaluated in float64 as the exact answer.

Tolerance, derived: the logits are cosine-type similarities, ``|x| <= 1``. The engine's
float32 bilinear resize takes two interpolations (rows, then columns), each
``(1 - l) a + l b``: weights rounded to float32 (<= 2^-24 relative), two products and a sum
(<= 3 roundings of 2^-24 each on values <= 1); so <= 2 * 4 * 2^-24 = 4.8e-7 on a logit, and
<= 40 * 4.8e-7 = 1.9e-5 after the logit scale. The softmax is 2-Lipschitz per output in the
max norm (``|dp_i| <= p_i (|dz_i| + sum_j p_j |dz_j|)``), the max over synonyms
1-Lipschitz: probabilities move by <= 3.8e-5, plus the softmax's own float32 rounding
(exp, sum of Q terms, division: < 1e-6 for Q <= 10). TOL = 4e-5. Labels must agree
wherever the exact winner leads the runner-up by more than 2 * TOL and the winning
probability is more than TOL away from prob_thd.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import napari_cass.engine._finish as finish_mod
import napari_cass.engine._segmenter as segmenter_mod
from napari_cass.engine import Segmenter
from napari_cass.engine._finish import finish_logits, query_groups
from napari_cass.engine.testing import tiny_models

TOL = 4e-5
SCALE = 40.0


def full_path_float64(logits: torch.Tensor, size, groups, prob_thd: float = 0.0):
    """The former full-array path, in float64: ``(probs (C, H, W), labels, confidence)``.

    ``logits`` is ``(h, w, Q)``, as the engine passes them.
    """
    full = F.interpolate(logits.permute(2, 0, 1).double()[None], size=size, mode="bilinear", align_corners=False)[0]
    soft = (full * SCALE).softmax(dim=0)
    probs = torch.stack([soft[a:b].amax(dim=0) for a, b in groups])
    best, lab = probs.max(dim=0)
    if prob_thd > 0:
        lab = torch.where(best < prob_thd, torch.zeros_like(lab), lab)
    return probs.numpy(), lab.numpy(), best.numpy()


def decisive(probs: np.ndarray, prob_thd: float = 0.0) -> np.ndarray:
    """Pixels whose label cannot flip under errors of TOL."""
    top2 = np.sort(probs, axis=0)[-2:]
    ok = (top2[1] - top2[0]) > 2 * TOL
    if prob_thd > 0:
        ok &= np.abs(top2[1] - prob_thd) > TOL
    return ok


def assert_matches_full_path(out, ref_probs, ref_labels, ref_best, prob_thd=0.0, stride=1):
    assert np.abs(out.confidence.astype(np.float64) - ref_best).max() <= TOL
    sure = decisive(ref_probs, prob_thd)
    assert sure.mean() > 0.99, "too many near-ties: the comparison would say little"
    assert np.array_equal(out.labels[sure], ref_labels[sure])
    if out.probabilities is not None:
        assert np.abs(out.probabilities - ref_probs[:, ::stride, ::stride]).max() <= TOL


@pytest.mark.parametrize("band_elements", [None, (2 * 5 + 6) * 211 * 3, 1])  # all rows, 3 rows, 1 row
@pytest.mark.parametrize("prob_thd", [0.0, 0.6])
def test_banded_equals_the_full_path(band_elements, prob_thd):
    """Random logits in [-1, 1]: any band height (1 row, 3 rows, all) gives the full path's result."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.rand(23, 31, 5, generator=gen) * 2 - 1
    groups = query_groups([2, 1, 2])
    size = (157, 211)
    out = finish_logits(logits, size, groups, logit_scale=SCALE, prob_thd=prob_thd, band_elements=band_elements)
    assert out.labels.shape == size and out.labels.dtype == np.int32
    assert out.confidence.dtype == np.float32 and out.probabilities is None
    ref = full_path_float64(logits, size, groups, prob_thd)
    assert_matches_full_path(out, *ref, prob_thd=prob_thd)
    if prob_thd > 0:
        assert (ref[1] == 0).mean() > 0.05 and ((ref[2] < prob_thd) & (ref[0].argmax(0) != 0)).any()


def test_probabilities_on_request_and_subsampled():
    gen = torch.Generator().manual_seed(4)
    logits = torch.rand(17, 19, 4, generator=gen) * 2 - 1
    groups = query_groups([1, 3])
    ref = full_path_float64(logits, (100, 90), groups)
    for stride in (1, 3, 7):
        out = finish_logits(
            logits, (100, 90), groups, logit_scale=SCALE, return_probabilities=True,
            probability_stride=stride, band_elements=(2 * 4 + 6) * 90 * 4,  # bands of 4 rows, not multiples of 3 or 7
        )
        assert out.probabilities.shape == (2, -(-100 // stride), -(-90 // stride))
        assert_matches_full_path(out, *ref, stride=stride)
    with pytest.raises(ValueError, match="probability_stride"):
        finish_logits(logits, (10, 10), groups, logit_scale=SCALE, return_probabilities=True, probability_stride=0)


def test_non_finite_logits_are_refused_not_returned():
    logits = torch.zeros(4, 4, 2)
    logits[2, 3, 1] = float("nan")
    with pytest.raises(FloatingPointError, match="1 non-finite.*please report"):
        finish_logits(logits, (8, 8), query_groups([1, 1]), logit_scale=SCALE)
    logits[2, 3, 1] = float("inf")
    with pytest.raises(FloatingPointError):
        finish_logits(logits, (8, 8), query_groups([1, 1]), logit_scale=SCALE)


@pytest.fixture(scope="module")
def models():
    return tiny_models(seed=2)


def test_engine_result_equals_the_full_path_on_tiny_models(models, monkeypatch):
    """Random weights: the merged logits the engine finishes, finished the old way, give its result."""
    seen = []
    real = segmenter_mod.finish_logits

    def spy(logits, size, groups, **kw):
        seen.append((logits.clone(), tuple(size), list(groups), kw))
        return real(logits, size, groups, **kw)

    monkeypatch.setattr(segmenter_mod, "finish_logits", spy)
    monkeypatch.setattr(finish_mod, "BAND_ELEMENTS", (2 * 7 + 6) * 260 * 5)  # 7 queries, 5-row bands
    image = (np.random.default_rng(5).random((180, 260, 3)) * 255).astype(np.uint8)
    seg = Segmenter.from_models(*models, device="cpu")
    res = seg.segment(image, ["cat", ["car", "automobile", "truck"], "road", ["sky", "cloud"]])
    logits, size, groups, kw = seen[-1]
    assert size == (180, 260) and groups == [(0, 1), (1, 4), (4, 5), (5, 7)] and kw["logit_scale"] == SCALE
    assert float(logits.abs().max()) <= 1.0 + 1e-6  # the bound the tolerance is derived from
    ref = full_path_float64(logits, size, groups)
    assert_matches_full_path(res, *ref)
    # the same with the default band size (one band for this image) and probabilities
    monkeypatch.setattr(finish_mod, "BAND_ELEMENTS", (2 * 7 + 6) * 260 * 180)
    full = seg.segment(image, ["cat", ["car", "automobile", "truck"], "road", ["sky", "cloud"]], return_probabilities=True)
    assert_matches_full_path(full, *ref)
    assert np.abs(full.confidence - res.confidence).max() <= 2 * TOL


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_finite_check_in_blocks_sees_every_row(monkeypatch, bad):
    # The guard checks the logits a block of rows at a time (isfinite makes two
    # temporaries of the logits' size); a block of one row here, so every block boundary
    # is crossed, and a bad value in any row (first, middle, last) must be found.
    from napari_cass.engine import _finish

    monkeypatch.setattr(_finish, "BAND_ELEMENTS", 20)  # 10 elements a block: one 3 x 4 row each
    logits = torch.rand(7, 3, 4, generator=torch.Generator().manual_seed(0))
    assert _finish._all_finite(logits)
    for row in (0, 3, 6):
        spoiled = logits.clone()
        spoiled[row, 2, 1] = bad
        assert not _finish._all_finite(spoiled)
        with pytest.raises(FloatingPointError, match="non-finite"):
            _finish.finish_logits(spoiled, (14, 8), [(0, 2), (2, 4)], logit_scale=40.0)


def test_release_freed_heap_runs_on_glibc_and_changes_no_result():
    # Returning free heap pages is a glibc call on Linux, a no-op elsewhere; either way
    # the finished outputs are the same numbers before and after.
    import sys

    from napari_cass.engine import _finish

    logits = torch.rand(9, 11, 4, generator=torch.Generator().manual_seed(2))
    before = _finish.finish_logits(logits, (30, 40), [(0, 1), (1, 4)], logit_scale=40.0)
    ran = _finish.release_freed_heap()
    assert ran is (sys.platform.startswith("linux") and _finish._malloc_trim() is not None)
    after = _finish.finish_logits(logits, (30, 40), [(0, 1), (1, 4)], logit_scale=40.0)
    assert np.array_equal(before.labels, after.labels) and np.array_equal(before.confidence, after.confidence)
