"""Presence prior, Ward clustering of the queries and the text adjustment (spec section 5)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_cass.engine._presence import (
    TEMPLATES,
    adjust_text,
    cluster_leaders,
    cluster_queries,
    object_similarity,
)


def _two_groups():
    # queries 0-2 near one direction, 3-4 near an orthogonal one
    base = torch.eye(8)
    noise = torch.randn(5, 8, generator=torch.Generator().manual_seed(0)) * 0.05
    t = torch.stack([base[0], base[0], base[0], base[1], base[1]]) + noise
    return F.normalize(t, dim=-1)


def test_templates_are_the_80_imagenet_ones():
    assert len(TEMPLATES) == 80
    assert TEMPLATES[0]("cat") == "a bad photo of a cat."


def test_clustering_thresholds():
    t = _two_groups()
    assert len(set(cluster_queries(t, 1e-6))) == 5  # h ~ 0: every query alone
    groups = cluster_queries(t, 0.5)
    assert groups[0] == groups[1] == groups[2] and groups[3] == groups[4] and groups[0] != groups[3]
    assert len(set(cluster_queries(t, 100.0))) == 1  # huge h: one cluster
    assert cluster_queries(t[:1], 0.1).tolist() == [0]
    assert sorted(set(groups)) == [0, 1]  # 0-based, consecutive


def test_leaders_are_the_most_present_member_of_each_cluster():
    clusters = np.array([0, 0, 0, 1, 1])
    prior = torch.tensor([0.1, 0.3, 0.2, 0.5, 0.4])
    assert cluster_leaders(prior, clusters).tolist() == [1, 3]
    per_crop = torch.tensor([[0.1, 0.3, 0.2, 0.5, 0.4], [0.9, 0.3, 0.2, 0.1, 0.4]])
    assert cluster_leaders(per_crop, clusters).tolist() == [[1, 3], [0, 4]]


def test_adjustment_moves_only_leaders_towards_their_top_patches():
    t = _two_groups()
    feats = F.normalize(torch.randn(1, 10, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    leaders = torch.tensor([1, 3])
    out = adjust_text(t, feats, leaders, alpha=0.3)
    assert out.shape == (1, 5, 8)
    assert torch.allclose(out[0, [0, 2, 4]], t[[0, 2, 4]])  # non-leaders unchanged
    assert torch.allclose(out.norm(dim=-1), torch.ones(1, 5))
    for q in (1, 3):
        sims = feats[0] @ t[q]
        top = sims.topk(2).indices
        mu = F.normalize(feats[0, top].mean(0), dim=0)
        expected = F.normalize(0.7 * t[q] + 0.3 * mu, dim=0)
        assert torch.allclose(out[0, q], expected, atol=1e-6)
        assert (out[0, q] @ mu) > (t[q] @ mu)  # moved towards the object's patches


@pytest.mark.parametrize("seed", range(20))
def test_object_similarity_is_eq9(seed):
    gen = torch.Generator().manual_seed(seed)
    e = 8
    feats = F.normalize(torch.randn(2, 4, e, generator=gen), dim=-1)
    text = F.normalize(torch.randn(2, 3, e, generator=gen), dim=-1)
    prior = torch.tensor([0.2, -0.1, 0.05])
    beta = 0.25
    s = object_similarity(feats, text, prior, beta=beta)
    assert s.shape == (2, 4, 3) and s.dtype == torch.float32
    # Eq. 9 in float64 from the same float32 inputs.
    expected = (1 - beta) * feats.double() @ text.double().transpose(-1, -2) + beta * prior.double()
    # Float32 error: the dot product of unit vectors (magnitude <= 1) takes e roundings,
    # scaling, the prior term and the sum three more, on values of magnitude
    # <= (1 - beta) + beta * max|p|.
    magnitude = (1 - beta) + beta * prior.abs().max().item()
    atol = (e + 3) * torch.finfo(torch.float32).eps * magnitude
    assert (s.double() - expected).abs().max().item() <= atol
    # beta = 0 is the plain cosine, beta = 1 the prior alone
    assert torch.allclose(object_similarity(feats, text, prior, 1.0), prior.expand(2, 4, 3), rtol=0, atol=0)
    plain = (feats.double() @ text.double().transpose(-1, -2))
    assert (object_similarity(feats, text, prior, 0.0).double() - plain).abs().max().item() <= atol
