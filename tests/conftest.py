"""Shared fixtures for the plugin tests (napari viewer, tiny random-weight models).

The plugin tests build their Segmenter from ``tiny_models()``: random weights,
so the labels are meaningless and only the mechanics are checked. The tiny
segmenter also uses a small working resolution (one 112 px pass) to keep the
suite fast on two CPU cores.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Widget settings go to a fresh folder per test, never to the user's config."""
    monkeypatch.setenv("NAPARI_CASS_CONFIG_DIR", str(tmp_path_factory.mktemp("cass-config")))


@pytest.fixture(scope="session")
def tiny_model_set() -> tuple[Any, Any, Any]:
    """Tiny random-weight CLIP, tokenizer and DINO, built once per test session."""
    from napari_cass.engine.testing import tiny_models

    return tiny_models()


@pytest.fixture
def tiny_factory(tiny_model_set: tuple[Any, Any, Any]) -> Callable[..., Any]:
    """A ``segmenter_factory`` for the widget that never touches real weights.

    Records each call in ``factory.calls`` so tests can check the lazy caching.
    """
    from napari_cass.engine import Segmenter, get_preset

    calls: list[dict[str, str]] = []

    def factory(clip: str, vfm: str, method: str, preset: str, device: str) -> Any:
        calls.append(dict(clip=clip, vfm=vfm, method=method, preset=preset, device=device))
        small = get_preset(preset).with_(short_side=112, mode="whole")
        return Segmenter.from_models(*tiny_model_set, method=method, preset=small, device="cpu")

    factory.calls = calls  # type: ignore[attr-defined]
    return factory


@pytest.fixture
def rgb_image() -> np.ndarray:
    """A small synthetic RGB picture: two coloured halves plus noise."""
    rng = np.random.default_rng(0)
    img = np.zeros((48, 64, 3), dtype=np.uint8)
    img[:, :32] = (200, 40, 40)
    img[:, 32:] = (40, 160, 220)
    noise = rng.integers(0, 30, size=img.shape, dtype=np.uint8)
    return img + noise


@pytest.fixture
def notes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Capture the widget's error / info / warning notifications."""
    import napari_cass._widget as widget_mod

    seen: dict[str, list[str]] = {"error": [], "info": [], "warning": []}
    monkeypatch.setattr(widget_mod, "show_error", lambda m: seen["error"].append(str(m)))
    monkeypatch.setattr(widget_mod, "show_info", lambda m: seen["info"].append(str(m)))
    monkeypatch.setattr(widget_mod, "show_warning", lambda m: seen["warning"].append(str(m)))
    return seen


@pytest.fixture
def cass_widget(make_napari_viewer: Callable[..., Any], tiny_factory: Callable[..., Any]) -> Any:
    """A viewer with the CASS dock widget (tiny random-weight models, synchronous runs)."""
    from napari_cass._widget import CassWidget

    viewer = make_napari_viewer()
    widget = CassWidget(viewer, segmenter_factory=tiny_factory)
    viewer.window.add_dock_widget(widget, name="CASS segmentation")
    widget.run_in_thread = False
    return widget
