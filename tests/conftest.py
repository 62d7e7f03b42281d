"""Shared fixtures for the plugin tests (napari viewer, tiny random-weight models).

The plugin tests build their Segmenter from ``tiny_models()``: random weights,
so the labels are meaningless and only the mechanics are checked. The tiny
segmenter also uses a small working resolution (one 112 px pass) to keep the
suite fast on two CPU cores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import os

import numpy as np
import pytest

# Full-size random models in tests run in float32, never by a timing probe's choice (which
# would depend on the machine's load); tests/test_precision.py checks the probe itself.
os.environ.setdefault("NAPARI_CASS_PRECISION", "fp32")


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
def cli_builds(tiny_model_set: tuple[Any, Any, Any], monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The CLI's model loading replaced by the tiny random models; records each build's args."""
    from napari_cass.cli import _segment as segment_command
    from napari_cass.engine import Segmenter

    built: list[Any] = []

    def build(args: Any) -> Any:
        built.append(args)
        return Segmenter.from_models(*tiny_model_set, method=args.method, preset=args.preset, device="cpu")

    monkeypatch.setattr(segment_command, "build_segmenter", build)
    return built


@pytest.fixture
def tiny_factory(tiny_model_set: tuple[Any, Any, Any]) -> Callable[..., Any]:
    """A ``segmenter_factory`` for the widget that never touches real weights.

    Records each call in ``factory.calls`` so tests can check the lazy caching.
    """
    from napari_cass.engine import Segmenter, get_preset

    calls: list[dict[str, str]] = []

    def factory(clip: str, vfm: str, method: str, preset: str, device: str) -> Any:
        calls.append({"clip": clip, "vfm": vfm, "method": method, "preset": preset, "device": device})
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
    """Every notification the plugin raises (all go through ``_error_panel.notify``)."""
    import napari_cass.plugin._error_panel as panel_mod

    seen: dict[str, list[str]] = {"error": [], "info": [], "warning": []}
    monkeypatch.setattr(panel_mod, "show_error", lambda m: seen["error"].append(str(m)))
    monkeypatch.setattr(panel_mod, "show_info", lambda m: seen["info"].append(str(m)))
    monkeypatch.setattr(panel_mod, "show_warning", lambda m: seen["warning"].append(str(m)))
    return seen


@pytest.fixture
def toasts() -> Any:
    """Every napari notification (any source) shown while the test runs."""
    from napari.utils.notifications import notification_manager

    seen: list[Any] = []

    def record(notification: Any) -> None:
        seen.append(notification)

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def open_plugin(viewer: Any, factory: Callable[..., Any]) -> tuple[Any, Any]:
    """Open the dock as a user does (Plugins > CASS segmentation) and inject tiny models."""
    dock, widget = viewer.window.add_plugin_dock_widget("napari-cass", "CASS segmentation")
    widget.segmenter_factory = factory
    return dock, widget


@pytest.fixture
def plugin(make_napari_viewer: Callable[..., Any], tiny_factory: Callable[..., Any],
           recwarn: pytest.WarningsRecorder) -> Any:
    """The CASS dock opened through napari's plugin path in a shown viewer (worker threads).

    Fails the test if the plugin touched a private napari attribute (the proxy warns).
    """
    viewer = make_napari_viewer(show=True)
    _dock, widget = open_plugin(viewer, tiny_factory)
    yield widget
    private = [str(w.message) for w in recwarn if "Private attribute" in str(w.message)]
    assert private == [], private


@pytest.fixture
def cass_widget(plugin: Any) -> Any:
    """The plugin dock with synchronous runs (for tests of results, not of threading)."""
    plugin.run_in_thread = False
    return plugin
