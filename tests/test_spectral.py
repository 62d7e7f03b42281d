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
    # brute force over all permutations would be 720: compare with the max assignment instead.
    # The engine solves the float32 cost 1 - d: an assignment it prefers can fall short of
    # the float64 optimum by at most 2 n float32 roundings of the entries.
    r, c = linear_sum_assignment(-d)
    n, u32 = d.shape[0], np.finfo(np.float32).eps
    assert d[r, c].sum() - total <= 2 * n * u32
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


def _graph_with_spectrum(vals: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``Q diag(vals) Q^T`` for a seeded random orthogonal Q (columns = eigenvectors)."""
    n = vals.shape[0]
    q, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return (q * vals) @ q.T, q


@pytest.mark.parametrize("eta, expected_q", [(0.95, 4), (0.85, 3), (0.70, 2)])
def test_adaptive_rank_keeps_energy(eta, expected_q):
    # Cumulative energy 0.50, 0.75, 0.90, 0.975, 0.99, 1.00: every threshold sits at least
    # 0.025 (0.5 in absolute eigenvalue terms) from a partial sum, never on one.
    vals = torch.tensor([10.0, 5.0, 3.0, 1.5, 0.3, 0.2], dtype=torch.float64)
    g, q = _graph_with_spectrum(vals)
    n, total, eps = len(vals), vals.sum().item(), torch.finfo(torch.float64).eps
    # Backward-stable eigensolver: each computed eigenvalue is within ~n eps ||g|| of the
    # exact one, so a partial sum moves by at most n * (n eps ||g||). Require a margin far
    # beyond that before trusting the discrete rank.
    rounding = n * n * eps * vals.max().item()
    margin = (vals.cumsum(0) - eta * total).abs().min().item()
    assert margin > 1e6 * rounding
    r = low_rank_graphs(g[None], rank=10, scaling=False, adaptive_energy=eta)[0]
    best = (q[:, :expected_q] * vals[:expected_q]) @ q[:, :expected_q].T
    off = ~torch.eye(n, dtype=torch.bool)
    # Eigenvectors are perturbed by ~ n eps ||g|| / gap (gap = 1.2 here, the smallest
    # between a kept and a dropped eigenvalue), the reconstruction by ||g|| times that.
    gap = 1.2
    atol = 10 * n * eps * vals.max().item() ** 2 / gap
    assert torch.allclose(r[off], best[off], rtol=0, atol=atol)
    # and the rank is not what a neighbouring q would give (the check has teeth)
    other = (q[:, : expected_q + 1] * vals[: expected_q + 1]) @ q[:, : expected_q + 1].T
    assert (r[off] - other[off]).abs().max() > 1e6 * atol


def test_rescale_to_range_matches_target_range():
    gen = torch.Generator().manual_seed(3)
    src = torch.randn(3, 5, 5, dtype=torch.float64, generator=gen)
    tgt = torch.rand(3, 5, 5, dtype=torch.float64, generator=gen) * 4 - 1
    out = rescale_to_range(src, tgt)
    # (s - min) / span * range + min: four roundings on values of magnitude <= ~5
    atol = 8 * torch.finfo(torch.float64).eps * 5
    assert torch.allclose(out.amin(dim=(-2, -1)), tgt.amin(dim=(-2, -1)), rtol=0, atol=atol)
    assert torch.allclose(out.amax(dim=(-2, -1)), tgt.amax(dim=(-2, -1)), rtol=0, atol=atol)
    # order preserving: taken in the order of the source, the output never decreases
    order = src.flatten(1).argsort(dim=1)
    assert torch.all(torch.diff(out.flatten(1).gather(1, order), dim=1) >= 0)


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


# ---------------------------------------------------------------- the engine's testing hook
def _tiny_segmenter():
    from napari_cass.engine import Segmenter, get_preset
    from napari_cass.engine.testing import tiny_models

    preset = get_preset("voc20").with_(short_side=112, crop=112, stride=56)  # 3 windows on 112 x 200
    return Segmenter.from_models(*tiny_models(), preset=preset, device="cpu")


def _picture():
    return np.random.default_rng(5).integers(0, 256, size=(112, 200, 3), dtype=np.uint8)


def test_probe_records_the_solver_assignment_of_every_window():
    from napari_cass.engine.testing import EngineProbe

    seg = _tiny_segmenter()
    plain = seg.segment(_picture(), "cat, dog, sky", return_probabilities=True)
    seg.probe = EngineProbe(record=True)
    probed = seg.segment(_picture(), "cat, dog, sky", return_probabilities=True)
    rec = seg.probe.records
    assert not probed.from_cache  # a probed run recomputes every window
    assert seg.probe.windows_seen == len(rec["cost"]) == 3
    for cost, (rows, cols), (used_rows, used_cols), pairs in zip(
        rec["cost"], rec["assignment"], rec["used_assignment"], rec["pairs"]
    ):
        r, c = linear_sum_assignment(cost)
        assert np.array_equal(rows, r) and np.array_equal(cols, c)
        assert np.array_equal(used_rows, r) and np.array_equal(used_cols, c)
        assert np.array_equal(pairs, np.stack([r, c], 1))  # reference reading: CLIP row[i], VFM col[i]
    # recording changes nothing: same operations in the same order
    assert np.array_equal(probed.labels, plain.labels)
    assert np.array_equal(probed.probabilities, plain.probabilities)


def test_probe_imposes_head_pairings():
    from napari_cass.engine.testing import EngineProbe

    seg = _tiny_segmenter()
    seg.probe = EngineProbe(record=True)
    own = seg.segment(_picture(), "cat, dog, sky", return_probabilities=True)
    solved = [tuple(a) for a in seg.probe.records["assignment"]]
    # imposing the solver's own answer is a no-op
    seg.probe = EngineProbe(record=True, head_pairings=solved)
    same = seg.segment(_picture(), "cat, dog, sky", return_probabilities=True)
    assert np.array_equal(same.probabilities, own.probabilities)
    # a different assignment (columns rotated by one) is used as given and changes the result
    rotated = [(r, np.roll(c, 1)) for r, c in solved]
    seg.probe = EngineProbe(record=True, head_pairings=rotated)
    other = seg.segment(_picture(), "cat, dog, sky", return_probabilities=True)
    for (rows, cols), (want_r, want_c) in zip(seg.probe.records["used_assignment"], rotated):
        assert np.array_equal(rows, want_r) and np.array_equal(cols, want_c)
    assert np.abs(other.probabilities - own.probabilities).max() > 1e-6


@pytest.mark.parametrize(
    "pairings, message",
    [
        ([(np.arange(4), np.arange(4))], "pairings for 1 window"),
        ([(np.arange(3), np.arange(3))] * 3, "needs 4 of each"),
        ([(np.array([0, 0, 1, 2]), np.arange(4))] * 3, "repeats a head"),
        ([(np.arange(4), np.array([0, 1, 2, 7]))] * 3, "outside"),
    ],
)
def test_probe_refuses_bad_pairings_with_a_clear_message(pairings, message):
    from napari_cass.engine.testing import EngineProbe

    seg = _tiny_segmenter()
    seg.probe = EngineProbe(head_pairings=pairings)
    with pytest.raises(ValueError, match=message):
        seg.segment(_picture(), "cat, dog")
