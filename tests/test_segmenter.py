"""The Segmenter end to end on tiny random-weight models.

Random weights make the labels meaningless: these tests check mechanics (shapes,
caching, progress, cancel, errors, methods), never segmentation quality.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_cass.engine import (
    METHODS,
    SegmentationCancelled,
    Segmenter,
    benchmark_classes,
    get_preset,
    resolve_device,
)
from napari_cass.engine.testing import tiny_models


@pytest.fixture(scope="module")
def models():
    return tiny_models(seed=1)


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return (rng.random((180, 260, 3)) * 255).astype(np.uint8)


def make(models, **kw):
    return Segmenter.from_models(*models, device="cpu", **kw)


def test_result_shapes_and_probabilities(models, image):
    """Random weights: checks shapes and that probabilities are a distribution."""
    seg = make(models)
    res = seg.segment(image, ["cat", ["car", "automobile"], "road"], return_probabilities=True)
    assert res.labels.shape == (180, 260) and res.labels.dtype == np.int32
    assert res.probabilities.shape == (3, 180, 260) and res.probabilities.dtype == np.float32
    assert res.class_names == ["cat", "car", "road"]
    assert not res.has_background
    # each label is a winning class; exact argmax equality would sit on float ties (two
    # logits a few ulps apart can give equal probabilities after exp), so allow rounding
    top = np.take_along_axis(res.probabilities, res.labels[None].astype(np.intp), 0)[0]
    assert np.all(top >= res.probabilities.max(0) - 4e-7)
    assert (res.labels == res.probabilities.argmax(0)).mean() > 0.999
    # max over synonyms after the softmax: class sums can exceed 1 only through synonyms
    assert np.all(res.probabilities <= 1 + 1e-6) and np.all(res.probabilities >= 0)
    assert res.confidence.shape == (180, 260) and res.confidence.dtype == np.float32
    # 1 / sum(exp) (the engine) and max(exp / sum(exp)) (here) round differently: a few ulps
    assert np.allclose(res.confidence, res.probabilities.max(0), rtol=4e-7, atol=0)
    for key in ("clip_encoder", "vfm_encoder", "attention", "text", "total"):
        assert key in res.timings
    # by default only labels and confidence are kept (no (classes, H, W) array)
    plain = seg.segment(image, ["cat", ["car", "automobile"], "road"])
    assert plain.probabilities is None
    assert np.array_equal(plain.labels, res.labels) and np.array_equal(plain.confidence, res.confidence)
    # a subsampled grid of the probabilities, on request
    sub = seg.segment(image, ["cat", ["car", "automobile"], "road"], return_probabilities=True, probability_stride=7)
    assert sub.probabilities.shape == (3, 26, 38)
    assert np.array_equal(sub.probabilities, res.probabilities[:, ::7, ::7])


def test_prompt_change_reuses_the_vision_cache_exactly(models, image):
    """Random weights: the cached path must give exactly what a cold run gives."""
    seg = make(models)
    first = seg.segment(image, "cat, dog")
    assert not first.from_cache
    warm = seg.segment(image, "cat, dog, road")
    assert warm.from_cache
    cold = make(models).segment(image, "cat, dog, road")
    assert np.array_equal(warm.labels, cold.labels)
    assert np.array_equal(warm.confidence, cold.confidence)
    assert "clip_encoder" not in warm.timings  # no encoder ran
    # a different image (same shape) is not served from the cache
    other = seg.segment(image[::-1].copy(), "cat, dog")
    assert not other.from_cache


def test_text_embeddings_are_cached_per_word(models, image):
    seg = make(models)
    seg.segment(image, "cat, dog")
    assert len(seg._text) == 2
    seg.segment(image, "dog, bird")
    assert len(seg._text) == 3  # only "bird" was encoded


def test_progress_and_cancel_within_one_crop(models, image):
    """Random weights: cancel is honoured before the next crop."""
    seg = make(models, preset="context59")
    calls = []
    res = seg.segment(image, "a, b", progress=lambda d, t, m: calls.append((d, t, m)))
    assert calls[-1][0] == calls[-1][1] and res is not None
    n_crops = sum("crop" in m for _, _, m in calls)
    assert n_crops == 8  # 180 x 260 is resized to 336 x 485: 2 rows x 4 columns of windows
    crops_seen = []

    def cancel():
        return len(crops_seen) >= 1

    def progress(d, t, m):
        if "crop" in m:
            crops_seen.append(m)

    seg.clear_cache()
    with pytest.raises(SegmentationCancelled):
        seg.segment(image, "a, b", progress=progress, cancel=cancel)
    assert len(crops_seen) == 1


def test_background_words_become_class_zero(models, image):
    """Random weights: the prob_thd rule sends exactly the low-confidence pixels to class 0.

    With 4 queries the winning probability is at least 1/4, so voc21's prob_thd of 0.1
    never fires: the threshold is set to the median winning probability of a run
    without it, so about half of the pixels fall below it.
    """
    seg = make(models, preset=get_preset("voc21").with_(prob_thd=0.0))
    free = seg.segment(image, "cat, dog", background=["sky", "wall"], return_probabilities=True)
    assert free.class_names == ["background", "cat", "dog"] and free.has_background
    assert np.array_equal(free.labels, free.probabilities.argmax(0))
    thd = float(np.median(free.confidence))
    seg.set_preset(get_preset("voc21").with_(prob_thd=thd))
    res = seg.segment(image, "cat, dog", background=["sky", "wall"])
    assert res.from_cache  # same vision side: only the rule differs
    assert np.array_equal(res.confidence, free.confidence)
    low = free.confidence < thd
    changed = res.labels != free.labels
    assert np.all(res.labels[low] == 0) and np.array_equal(res.labels[~low], free.labels[~low])
    assert np.array_equal(changed, low & (free.labels != 0))  # exactly those pixels changed
    assert changed.sum() > 0.1 * changed.size  # the rule really fired (not a vacuous test)
    # a benchmark list with "background" first counts as having one
    res2 = seg.segment(image, benchmark_classes("voc21")[:3])
    assert res2.has_background


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_in_the_same_code_path(models, image, method):
    """Random weights: each baseline produces valid probabilities."""
    res = make(models, method=method).segment(image, "cat, dog", return_probabilities=True)
    assert res.probabilities.shape == (2, 180, 260)
    assert np.allclose(res.probabilities.sum(0), 1, atol=1e-5)
    assert np.all(np.isfinite(res.confidence)) and np.all(res.confidence >= 0.5 - 1e-6)


def test_methods_differ(models, image):
    out = {m: make(models, method=m).segment(image, "cat, dog").confidence for m in ("cass", "naclip", "clip")}
    assert not np.allclose(out["cass"], out["naclip"])
    assert not np.allclose(out["naclip"], out["clip"])


def test_ablation_switches_change_the_result(models, image):
    base = make(models).segment(image, "cat, dog").confidence
    for opts in ({"matching": False}, {"low_rank": False}, {"vfm_graph": False}, {"presence_prior": False}):
        other = make(models, **opts).segment(image, "cat, dog").confidence
        assert not np.allclose(base, other), opts
    with pytest.raises(TypeError, match="Unknown option"):
        make(models, bogus=True)


def test_whole_mode_small_images_and_grey_input(models):
    """Random weights: whole mode, an image smaller than a crop, a 2-D float image."""
    seg = make(models, preset="voc21")
    res = seg.segment(np.random.default_rng(0).random((60, 90)), "cat")
    assert res.labels.shape == (60, 90)
    small = make(models, preset=get_preset("interactive").with_(short_side=100))
    assert small.segment(np.zeros((50, 70, 4), np.uint16), "a, b").labels.shape == (50, 70)


def test_bad_inputs(models):
    seg = make(models)
    with pytest.raises(ValueError, match="empty"):
        seg.segment(np.zeros((20, 20, 3), np.uint8), "")
    with pytest.raises(ValueError, match="Unsupported image shape"):
        seg.segment(np.zeros((3, 20, 20, 3), np.uint8), "cat")
    with pytest.raises(ValueError, match="Unknown method"):
        make(models, method="magic")
    with pytest.raises(ValueError, match="needs a VFM"):
        Segmenter.from_models(models[0], models[1], None, method="cass")
    with pytest.raises(ValueError, match="Unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA was requested"):
            resolve_device("cuda")


def test_engine_import_pulls_no_qt_or_napari():
    code = (
        "import sys, napari_cass.engine, napari_cass.io; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'superqt')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_out_of_gpu_memory_says_what_to_do(models, monkeypatch):
    seg = make(models)

    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(seg, "_segment", boom)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="batch_size=1.*device='cpu'"):
        seg.segment(np.zeros((20, 20, 3), np.uint8), "cat")


def test_prompt_change_skips_image_conversion(models, image, monkeypatch):
    """Random weights: a cache hit does not re-validate or re-convert the pixels."""
    import napari_cass.engine._segmenter as S

    seg = make(models)
    seg.segment(image, "cat, dog")
    calls = []
    real = S.load_rgb
    monkeypatch.setattr(S, "load_rgb", lambda im: calls.append(1) or real(im))
    assert seg.segment(image, "cat, dog, road").from_cache
    assert calls == []
    assert not seg.segment(image[:, ::-1].copy(), "cat").from_cache
    assert calls == [1]


def test_mask_convention_keeps_value_0_for_background(models, image):
    """Random weights: without a background class, class k is mask value k + 1."""
    seg = make(models)
    res = seg.segment(image, "cat, dog")
    assert res.label_offset == 1
    assert np.array_equal(res.mask(np.uint8), res.labels + 1) and res.mask(np.uint8).dtype == np.uint8
    assert [c.name for c in res.mask_classes] == ["background", "cat", "dog"]
    assert res.mask_classes[0].queries == ()
    bg = seg.segment(image, "cat", background="sky")
    assert bg.label_offset == 0 and np.array_equal(bg.mask(), bg.labels)
    assert [c.name for c in bg.mask_classes] == ["background", "cat"]


def test_result_confidence_is_stored_or_derived_from_full_probabilities():
    from napari_cass.engine import ClassPrompt, SegmentationResult

    classes = [ClassPrompt.from_words(["a"]), ClassPrompt.from_words(["b"])]
    probs = np.array([[[0.9, 0.2]], [[0.1, 0.8]]], np.float32)
    res = SegmentationResult(labels=np.array([[0, 1]], np.int32), probabilities=probs, classes=classes)
    assert np.array_equal(res.confidence, np.array([[0.9, 0.8]], np.float32)) and res.confidence.dtype == np.float32
    with pytest.raises(ValueError, match="needs the confidence"):
        SegmentationResult(labels=np.zeros((1, 2), np.int32), probabilities=None, classes=classes)
    with pytest.raises(ValueError, match="needs the confidence"):  # subsampled probabilities are not enough
        SegmentationResult(labels=np.zeros((4, 4), np.int32), probabilities=np.ones((2, 2, 2), np.float32), classes=classes)
