"""Thin images segment to their own size, and the engine refuses a background word that is a class.

Issue 14, items 9 and 17. Tiny random-weight models: only the mechanics (shapes,
refusals, equal results) are checked.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_cass.engine import ClassPrompt, Segmenter, get_preset, with_background
from napari_cass.engine._image import resized_size

# Inside the 100-megapixel limit, far outside the usual aspect ratios: a line scan and a
# two-pixel-wide kymograph. Their short side scales below one pixel once the long side is
# capped at long_side_max (2048): 3 * 2048 / 20000 = 0.3, 2 * 2048 / 100000 = 0.04.
THIN = [(3, 20000), (100000, 2)]


@pytest.fixture(scope="module")
def sliding(tiny_model_set) -> Segmenter:
    """The default sliding-window preset (short side 336, long side capped at 2048)."""
    return Segmenter.from_models(*tiny_model_set, preset=get_preset("interactive"), device="cpu")


@pytest.mark.parametrize("shape", THIN)
def test_resized_size_keeps_at_least_one_pixel(shape: tuple[int, int]) -> None:
    preset = get_preset("interactive")
    h, w = resized_size(*shape, preset.short_side, preset.long_side_max)
    assert min(h, w) == 1 and max(h, w) == preset.long_side_max


@pytest.mark.parametrize("shape", THIN)
def test_thin_images_segment_to_their_own_size(sliding: Segmenter, shape: tuple[int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    result = sliding.segment(image, "sky, road")
    assert result.labels.shape == shape and result.confidence.shape == shape
    assert set(np.unique(result.labels)) <= {0, 1}
    assert np.isfinite(result.confidence).all()


def test_thin_image_through_the_server(tiny_model_set) -> None:
    """The server runs the same engine: a line scan is a result there too, not a 500."""
    from napari_cass.server import BackgroundServer, RemoteSegmenter, create_app

    image = np.random.default_rng(1).integers(0, 256, (3, 20000, 3), dtype=np.uint8)
    small = get_preset("interactive").with_(short_side=112, mode="whole")  # 0.3 rows too: 3 * 2048 / 20000
    local = Segmenter.from_models(*tiny_model_set, preset=small, device="cpu")
    served = Segmenter.from_models(*tiny_model_set, preset=small, device="cpu")
    reference = local.segment(image, "sky, road")
    with BackgroundServer(create_app(served)) as server, RemoteSegmenter(server.url) as remote:
        got = remote.segment(image, "sky, road")
    assert got.labels.shape == (3, 20000)
    np.testing.assert_array_equal(got.labels, reference.labels)


# ----------------------------------------------------------------------------- item 17
def _cli_message(classes: str, background: str) -> str:
    """What the CLI and the widget say (both call with_background)."""
    with pytest.raises(ValueError) as info:
        with_background(classes, background)
    return str(info.value)


@pytest.mark.parametrize("classes, background", [
    ("cat | kitten, dog", "sky, Kitten"),  # a class's synonym
    ("cat, dog", ["dog"]),  # a class name, as a list
    ("cat, dog", "grass | DOG"),  # a class name, in another case, "|"-separated
])
def test_segment_refuses_a_background_word_that_is_a_class(sliding: Segmenter, classes: str,
                                                           background) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    expected = _cli_message(classes, background if isinstance(background, str) else ",".join(background))
    assert "is also the class" in expected
    with pytest.raises(ValueError) as info:
        sliding.segment(image, classes, background=background)
    assert str(info.value) == expected


def test_background_words_and_a_background_class_give_the_same_result(tiny_model_set) -> None:
    """``background=`` words, or a "background" ClassPrompt first (how eval passes the benchmarks)."""
    seg = Segmenter.from_models(*tiny_model_set, preset=get_preset("interactive").with_(short_side=112, mode="whole"),
                                device="cpu")
    image = np.random.default_rng(2).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    by_words = seg.segment(image, "cat, dog", background="sky, wall")
    inline = seg.segment(image, [ClassPrompt("background", ("sky", "wall")), ClassPrompt("cat", ("cat",)),
                                 ClassPrompt("dog", ("dog",))])
    assert by_words.has_background and inline.has_background
    assert [c.name for c in by_words.classes] == ["background", "cat", "dog"]
    np.testing.assert_array_equal(by_words.labels, inline.labels)
    # A benchmark list that reuses a word in its background class (COCO-Object's "bed")
    # is taken as given: the engine checks only what is passed as background words.
    coco_like = [ClassPrompt("background", ("sky", "bed")), ClassPrompt("bed", ("bed",))]
    assert seg.segment(image, coco_like).labels.shape == (40, 52)
