"""Images the engine used to refuse or spoil: very elongated ones, near-uniform ones.

Random tiny models: the labels mean nothing; what is checked is that every image of
at least 2 x 2 pixels segments to its own size, that the padding added for the
encoders is cut off before the result is built, and that no NaN ever leaves the engine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import napari_cass.engine._segmenter as segmenter_mod
from napari_cass.engine import Segmenter, get_preset
from napari_cass.engine._image import resized_size
from napari_cass.engine._methods import proxy_attention
from napari_cass.engine.testing import tiny_models


@pytest.fixture(scope="module")
def models():
    return tiny_models(seed=3)


def rand_image(shape, seed=0):
    return (np.random.default_rng(seed).random((*shape, 3)) * 255).astype(np.uint8)


def spy_finish(monkeypatch):
    seen = []
    real = segmenter_mod.finish_logits

    def spy(logits, size, groups, **kw):
        seen.append(tuple(logits.shape[:2]))  # (h, w, Q)
        return real(logits, size, groups, **kw)

    monkeypatch.setattr(segmenter_mod, "finish_logits", spy)
    return seen


# (2, 500) resizes to 8 x 2048, (15, 2000) to 15 x 2048, (3, 4000) to 2 x 2048: all below
# CLIP's 16-pixel patch, which used to crash inside PyTorch's patch convolution.
@pytest.mark.parametrize("shape", [(2, 500), (500, 2), (15, 2000), (3, 4000), (2, 2), (2, 3)])
@pytest.mark.parametrize("method", ["cass", "proxyclip", "clip"])
def test_elongated_and_tiny_images_segment_to_their_own_size(models, monkeypatch, shape, method):
    seen = spy_finish(monkeypatch)
    seg = Segmenter.from_models(*models, device="cpu", method=method)
    res = seg.segment(rand_image(shape), "cat, dog, road")
    assert res.labels.shape == shape and res.confidence.shape == shape
    assert np.all(np.isfinite(res.confidence)) and np.all(res.confidence >= 1 / 3 - 1e-6)
    assert res.labels.min() >= 0 and res.labels.max() <= 2
    # the logits were cut back to the resized image (no padded rows) before the final resize
    assert seen[-1] == resized_size(*shape, 336, 2048)


@pytest.mark.parametrize("preset,quirks", [("voc21", False), ("voc20", True), ("cityscapes", False)])
def test_elongated_images_in_whole_mode_crop_prior_and_reference_quirks(models, monkeypatch, preset, quirks):
    seen = spy_finish(monkeypatch)
    seg = Segmenter.from_models(*models, device="cpu", preset=preset, reference_quirks=quirks)
    res = seg.segment(rand_image((3, 900)), "cat, dog")
    assert res.labels.shape == (3, 900) and np.all(np.isfinite(res.confidence))
    p = get_preset(preset)
    assert seen[-1] == resized_size(3, 900, p.short_side, p.long_side_max)


def test_one_row_or_column_is_refused_with_what_is_accepted(models):
    seg = Segmenter.from_models(*models, device="cpu")
    for shape in [(1, 500), (500, 1), (1, 1)]:
        with pytest.raises(ValueError, match=r"too small.*at least 2 x 2 pixels"):
            seg.segment(np.zeros(shape, np.uint8), "cat")


def _reference_proxy_attention(tokens):
    """ProxyCLIP's formula as published: every negative entry masked."""
    f = F.normalize(tokens, dim=-1)
    sim = f @ f.transpose(-1, -2)
    sim = (sim - 1.2 * sim.mean(dim=(-2, -1), keepdim=True)) * 3.0
    return sim.masked_fill(sim < 0, float("-inf")).softmax(dim=-1)


def test_proxy_attention_on_a_uniform_crop_keeps_each_tokens_own_entry():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, 1, 32, generator=gen)
    tokens = base + 0.05 * torch.randn(1, 49, 32, generator=gen)  # all cosines ~0.99 > 1 / 1.2
    assert torch.isnan(_reference_proxy_attention(tokens)).all()  # the failure being fixed
    attn = proxy_attention(tokens)
    assert torch.isfinite(attn).all()
    assert torch.allclose(attn.sum(-1), torch.ones(1, 49))
    # each token attends to itself: its cosine with itself (1) is its row's maximum
    assert torch.equal(attn[0].argmax(-1), torch.arange(49))


def test_proxy_attention_is_unchanged_where_proxyclip_is_finite():
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, 64, 32, generator=gen)  # dissimilar tokens: mean cosine ~0
    ref = _reference_proxy_attention(tokens)
    assert torch.isfinite(ref).all() and (ref == 0).any()  # the mask did act
    assert torch.equal(proxy_attention(tokens), ref)


def test_uniform_image_with_proxyclip_gives_no_nan(models):
    """Random weights: a flat grey image used to give NaN everywhere with proxyclip."""
    seg = Segmenter.from_models(*models, device="cpu", method="proxyclip")
    res = seg.segment(np.full((300, 400, 3), 128, np.uint8), "cat, dog", return_probabilities=True)
    assert np.all(np.isfinite(res.confidence)) and np.all(np.isfinite(res.probabilities))
    assert np.allclose(res.probabilities.sum(0), 1, atol=1e-5)


def test_a_nan_inside_the_engine_is_an_error_not_a_result(models, monkeypatch):
    real = segmenter_mod.patch_features

    def poisoned(*args, **kwargs):
        feats, grid = real(*args, **kwargs)
        feats = feats.clone()
        feats[0, 0, 0] = float("nan")
        return feats, grid

    monkeypatch.setattr(segmenter_mod, "patch_features", poisoned)
    seg = Segmenter.from_models(*models, device="cpu")
    with pytest.raises(FloatingPointError, match="non-finite"):
        seg.segment(rand_image((100, 120)), "cat, dog")
