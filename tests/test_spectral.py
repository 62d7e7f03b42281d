"""Spectral distillation pieces against hand-checkable cases (spec section 4)."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import wasserstein_distance

from napari_cass.engine._spectral import (
    aggregate,
    eigen_signatures,
    eigenscale,
    gaussian_bias,
    low_rank_graphs,
    match_heads,
    rescale_to_range,
    spectral_distance,
)


def _psd(n_graphs, n=30, rank=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(n_graphs, n, rank, generator=g, dtype=torch.float64)
    return k @ k.transpose(-1, -2) / 8


def test_signatures_are_sorted_normalised_top_k():
    graphs = _psd(3)
    sig = eigen_signatures(graphs, k=5)
    assert sig.shape == (3, 5)
    assert torch.allclose(sig.sum(-1), torch.ones(3, dtype=torch.float64))
    assert torch.all(sig[:, :-1] >= sig[:, 1:])
    top = torch.linalg.eigvalsh(graphs[0]).flip(0)[:5]
    assert torch.allclose(sig[0], top / top.sum())


def test_distance_is_20x_wasserstein_of_signatures():
    sig_a = eigen_signatures(_psd(4, seed=1), k=20)
    sig_b = eigen_signatures(_psd(3, seed=2), k=20)
    d = spectral_distance(sig_a, sig_b)
    assert d.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            expected = 20 * wasserstein_distance(sig_a[i].numpy(), sig_b[j].numpy())
            assert d[i, j].item() == pytest.approx(expected, abs=1e-12)
    assert torch.all((d >= 0) & (d <= 2))


def test_matching_maximises_total_distance():
    rng = np.random.default_rng(0)
    d = rng.random((6, 6))
    clip_heads, vfm_heads, w, cost = match_heads(d, pairing="literal")
    total = d[vfm_heads, clip_heads].sum()
    # brute force over all permutations would be 720: compare with the max assignment instead
    r, c = linear_sum_assignment(-d)
    assert total == pytest.approx(d[r, c].sum())
    assert np.allclose(w, d[vfm_heads, clip_heads], atol=1e-6)
    assert cost.dtype == np.float32


def test_reference_pairing_reads_the_assignment_backwards():
    # A 3-cycle permutation is not its own inverse: the two pairings differ.
    d = np.full((3, 3), 0.1)
    d[0, 1] = d[1, 2] = d[2, 0] = 0.9  # best: VFM 0->CLIP 1, VFM 1->CLIP 2, VFM 2->CLIP 0
    ref_clip, ref_vfm, ref_w, _ = match_heads(d, "reference")
    lit_clip, lit_vfm, lit_w, _ = match_heads(d, "literal")
    assert ref_clip.tolist() == [0, 1, 2] and ref_vfm.tolist() == [1, 2, 0]
    assert lit_clip.tolist() == [1, 2, 0] and lit_vfm.tolist() == [0, 1, 2]
    # the reference weight is D(row[i], col[i]) of the assignment, for both readings
    assert np.allclose(ref_w, 0.9, atol=1e-6) and np.allclose(lit_w, 0.9, atol=1e-6)


def test_unequal_head_counts_fall_back_to_literal_pairing():
    d = np.random.default_rng(1).random((3, 5))
    clip_heads, vfm_heads, w, _ = match_heads(d, "reference")
    assert sorted(vfm_heads.tolist()) == [0, 1, 2]
    assert len(set(clip_heads.tolist())) == 3 and max(clip_heads) < 5


def test_eigenscaling_endpoints_and_order():
    s = torch.tensor([[10.0, 6.0, 3.0, 2.0]], dtype=torch.float64)
    out = eigenscale(s)
    assert out[0, 0].item() == pytest.approx(15.0)  # 1.5 s_max
    assert out[0, -1].item() == pytest.approx(1.0)  # 0.5 s_min
    assert torch.all(out[0, :-1] > out[0, 1:])
    # linear: equal gaps stay proportional
    x = torch.tensor([[4.0, 3.0, 2.0]], dtype=torch.float64)
    y = eigenscale(x)
    assert (y[0, 0] - y[0, 1]).item() == pytest.approx((y[0, 1] - y[0, 2]).item())
    flat = torch.tensor([[2.0, 2.0]], dtype=torch.float64)
    assert torch.equal(eigenscale(flat), flat)  # guarded s_max == s_min


def test_low_rank_reconstruction_rank_and_diagonal():
    g = _psd(2, n=40, rank=20)
    r = low_rank_graphs(g, rank=5, scaling=False)
    assert torch.allclose(torch.diagonal(r, dim1=-2, dim2=-1), torch.zeros(2, 40, dtype=torch.float64))
    # restoring the diagonal gives a rank-5 matrix equal to the best rank-5 approximation
    vals, vecs = torch.linalg.eigh(g)
    best = (vecs[..., -5:] * vals[..., None, -5:]) @ vecs[..., -5:].transpose(-1, -2)
    off = ~torch.eye(40, dtype=torch.bool)
    assert torch.allclose(r[:, off], best[:, off], atol=1e-9)
    # eigenscaling changes the values but keeps symmetry
    rs = low_rank_graphs(g, rank=5, scaling=True)
    assert torch.allclose(rs, rs.transpose(-1, -2))
    assert not torch.allclose(rs, r)


def test_adaptive_rank_keeps_energy():
    vals = torch.tensor([10.0, 5.0, 3.0, 1.0, 0.5, 0.5], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    g = (q * vals) @ q.T
    # 95% of 20 = 19 -> first 4 eigenvalues (10+5+3+1 = 19)
    r = low_rank_graphs(g[None], rank=10, scaling=False, adaptive_energy=0.95)[0]
    best = (q[:, :4] * vals[:4]) @ q[:, :4].T
    off = ~torch.eye(6, dtype=torch.bool)
    assert torch.allclose(r[off], best[off], atol=1e-9)


def test_rescale_to_range_matches_target_range():
    src = torch.randn(3, 5, 5, dtype=torch.float64)
    tgt = torch.rand(3, 5, 5, dtype=torch.float64) * 4 - 1
    out = rescale_to_range(src, tgt)
    assert torch.allclose(out.amin(dim=(-2, -1)), tgt.amin(dim=(-2, -1)))
    assert torch.allclose(out.amax(dim=(-2, -1)), tgt.amax(dim=(-2, -1)))
    # order preserving
    assert torch.equal(out.flatten(1).argsort(), src.flatten(1).argsort())


def test_aggregation_weights_eq7():
    d = torch.full((1, 2, 2), 1.0, dtype=torch.float64)
    a = torch.full((1, 2, 2), 0.0, dtype=torch.float64)
    w = torch.tensor([0.1], dtype=torch.float64)
    out = aggregate(d, a, w, lam=10.0)
    assert torch.allclose(out, torch.full_like(out, 0.5))  # (10*0.1*1 + 0) / (10*0.1 + 1)
    out0 = aggregate(d, a, torch.tensor([0.0], dtype=torch.float64), lam=10.0)
    assert torch.allclose(out0, a)


def test_gaussian_bias():
    om = gaussian_bias((3, 4), sigma=5.0)
    assert om.shape == (12, 12)
    assert torch.allclose(torch.diagonal(om), torch.ones(12))
    # positions (0,0) and (2,3): squared distance 13
    assert om[0, 11].item() == pytest.approx(np.exp(-13 / 50), rel=1e-6)
    assert torch.allclose(om, om.T)
