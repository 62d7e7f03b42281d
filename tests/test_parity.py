"""Numerical parity with the authors' CASS code on seeded random weights.

The reference outputs in shared/parity were produced by the authors'
implementation (CPU, float32) with the deterministic random weights of
``seeded_weights.py``. Random weights make the segmentation meaningless; what is
checked is that the engine computes the same numbers (``reference_quirks=True``).
Full-size CLIP ViT-B/16 and DINO ViT-B/8 on the CPU: about 20-40 s.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from _parity_data import PARITY_DIR, needs_parity_data

pytestmark = [needs_parity_data, pytest.mark.slow]


@pytest.fixture(scope="module")
def run():
    import open_clip
    import timm

    from napari_cass.engine import Segmenter, benchmark_classes

    spec = importlib.util.spec_from_file_location("seeded_weights", PARITY_DIR / "seeded_weights.py")
    sw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sw)
    clip = open_clip.create_model("ViT-B-16", pretrained=None, quick_gelu=True)
    clip.load_state_dict(sw.clip_vit_b16_state_dict(), strict=True)
    vfm = timm.create_model("vit_base_patch8_224.dino", pretrained=False, num_classes=0)
    vfm.load_state_dict(sw.dino_vitb8_state_dict(), strict=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    seg = Segmenter.from_models(clip, tokenizer, vfm, preset="voc20", reference_quirks=True, device="cpu")
    seg._debug = {}
    image = np.load(PARITY_DIR / "inputs_astronaut.npz")["image_orig"]
    result = seg.segment(image, benchmark_classes("voc20"))
    ref = dict(np.load(PARITY_DIR / "astronaut__voc20__exact.npz"))
    return result, seg._debug, ref


def test_queries_and_clusters(run):
    result, debug, ref = run
    assert [q for c in result.classes for q in c.queries] == list(ref["query_words"])
    assert np.array_equal(debug["clusters"], ref["cluster_info"])


def test_window_layout_prior_and_text(run):
    _, debug, ref = run
    assert np.allclose(debug["prior"].numpy(), ref["win_prior"][0], atol=1e-6)
    assert np.allclose(debug["text"].numpy(), ref["w0_text_before_eq8"], atol=1e-6)
    assert np.allclose(debug["adjusted"][0].numpy(), ref["w0_text_after_eq8"], atol=1e-5)
    adjusted = (debug["adjusted"] - debug["text"][None]).abs().amax(-1).numpy() > 0
    assert np.array_equal(adjusted, ref["win_adjusted_query_mask"])


def test_vfm_input_and_head_matching(run):
    _, debug, ref = run
    assert np.array_equal(debug["vfm_uint8"][0][0].permute(1, 2, 0).numpy(), ref["w0_inv_image"])
    win = debug["windows"]
    for i in range(len(ref["win_cost"])):
        assert np.allclose(win["cost"][i], ref["win_cost"][i], atol=1e-6)
        assert np.array_equal(win["pairs"][i][:, 1], ref["win_col_ind"][i])
    assert np.array_equal(win["pairs"][0], ref["w0_pairs_clip_dino"])
    assert np.allclose(win["weights"][0], ref["w0_w_d"], atol=1e-6)


def test_patch_logits_probabilities_and_labels(run):
    result, debug, ref = run
    assert np.abs(debug["patch_logits"].numpy() - ref["win_logits_eq9"]).max() < 1e-4
    probs = result.probabilities[:, ::4, ::4]
    assert np.abs(probs - ref["probs_s4"].astype(np.float32)).max() < 1e-3
    assert (result.labels == ref["labels"]).mean() >= 0.999
