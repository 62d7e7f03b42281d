"""The "server…" device of the CASS dock, against a real ``napari-cass serve`` on loopback.

The dock is opened through napari's plugin path (``plugin`` fixture); the server is
:class:`napari_cass.server.BackgroundServer` around a tiny random-weight Segmenter built
exactly like the fixture's local one (same seeded models, same small preset), so a
remote run and a local run of the same image must give the same labels, pixel for pixel.
Every server lives inside its test and is stopped there; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pytest

from napari_cass.plugin._server_panel import SERVER_DEVICE
from napari_cass.plugin._widget import CassWidget

from _gui_actions import click, set_classes

WAIT = 120_000




def run(qtbot, widget: CassWidget, timeout: int = WAIT) -> float:
    """Press Segment, wait for the worker; the seconds it took."""
    start = time.perf_counter()
    click(qtbot, widget.segment_btn)
    qtbot.waitUntil(lambda: not widget.is_running, timeout=timeout)
    return time.perf_counter() - start


def choose_server(qtbot, widget: CassWidget, url: str) -> None:
    """Pick "server…" in the real device combo and type the URL, as a user does."""
    widget.sections["Model"].expand(animate=False)
    widget.device_combo.setCurrentText(SERVER_DEVICE)
    qtbot.waitUntil(widget.model.server.isVisible, timeout=5_000)  # once the dock is shown
    widget.model.server.url_edit.clear()
    qtbot.keyClicks(widget.model.server.url_edit, url)


def tiny_server(tiny_model_set):
    """A loopback server around the same tiny segmenter the ``tiny_factory`` fixture builds."""
    from napari_cass.engine import Segmenter, get_preset
    from napari_cass.server import BackgroundServer, create_app

    small = get_preset("interactive").with_(short_side=112, mode="whole")
    seg = Segmenter.from_models(*tiny_model_set, method="cass", preset=small, device="cpu")
    return BackgroundServer(create_app(seg))


def test_server_run_equals_local_run_then_server_down(qtbot, plugin: CassWidget, rgb_image, tiny_model_set,
                                                     tiny_factory, notes: dict) -> None:
    viewer = plugin.viewer
    viewer.add_image(rgb_image, name="remote")
    viewer.add_image(rgb_image.copy(), name="local")
    set_classes(qtbot, plugin, "cat, dog | puppy, grass")
    plugin.class_table.background_edit.setText("sky, wall")
    server = tiny_server(tiny_model_set).start()
    try:
        choose_server(qtbot, plugin, server.url)
        click(qtbot, plugin.model.server.test_btn)
        qtbot.waitUntil(lambda: plugin.status_label.text().startswith("Connected"), timeout=30_000)
        assert server.url in plugin.errors.message and "cass on cpu" in plugin.errors.message

        plugin.select_image("remote")
        run(qtbot, plugin)
        assert not plugin.errors.is_error, plugin.errors.message
        assert plugin.device_label.text() == f"running on: server {server.url}"
        assert "round_trip" in plugin.last_run["timings"]  # the client's own timing: it went remote
        assert tiny_factory.calls == []  # no local model was built
        remote = np.array(plugin.labels_layer_for("remote").data)
        meta = plugin.labels_layer_for("remote").metadata["napari_cass"]
        assert meta["device"] == SERVER_DEVICE and meta["server"] == server.url

        set_classes(qtbot, plugin, "cat, dog | puppy, grass, road")  # prompt edit: features re-used
        run(qtbot, plugin)
        assert plugin.last_run["from_cache"] is True
        remote_rerun = np.array(plugin.labels_layer_for("remote").data)
        client = plugin.segmenter
        assert client.stats["uploads"] == 1  # the pixels went up once, for the first run
    finally:
        server.stop()

    plugin.device_combo.setCurrentText("cpu")
    set_classes(qtbot, plugin, "cat, dog | puppy, grass")
    plugin.select_image("local")
    run(qtbot, plugin)
    assert len(tiny_factory.calls) == 1 and plugin.device_label.text() == "running on: cpu"
    local = np.array(plugin.labels_layer_for("local").data)
    np.testing.assert_array_equal(remote, local)  # exact pixels
    assert len(np.unique(local)) > 1  # a real segmentation, not two empty layers
    set_classes(qtbot, plugin, "cat, dog | puppy, grass, road")
    run(qtbot, plugin)
    np.testing.assert_array_equal(remote_rerun, plugin.labels_layer_for("local").data)

    # The server is gone: the Test button and a run both say so, quickly, in the panel.
    plugin.device_combo.setCurrentText(SERVER_DEVICE)
    click(qtbot, plugin.model.server.test_btn)
    qtbot.waitUntil(lambda: not plugin.model.server.testing, timeout=15_000)
    assert plugin.errors.is_error and plugin.errors.message.startswith("Connection failed: Cannot reach")
    before = np.array(plugin.labels_layer_for("local").data)
    plugin.select_image("local")
    seconds = run(qtbot, plugin, timeout=15_000)
    assert seconds < 15 and plugin.errors.is_error
    message = plugin.errors.message
    assert message.startswith(f"Cannot reach the napari-cass server at {server.url}"), message
    assert "Is 'napari-cass serve' running there" in message and "Segmentation failed" not in message
    assert plugin.segmenter is not client  # "cpu" then "server…" again: a new client was built
    np.testing.assert_array_equal(plugin.labels_layer_for("local").data, before)  # nothing touched
    assert any("Cannot reach" in m for m in notes["error"])


def test_server_with_a_token(qtbot, plugin: CassWidget, rgb_image, tiny_model_set, tmp_path) -> None:
    from napari_cass.engine import Segmenter, get_preset
    from napari_cass.server import BackgroundServer, create_app

    token = "t0ken-for-the-widget-test-0123456789"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    os.chmod(token_file, 0o600)
    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat, dog")
    small = get_preset("interactive").with_(short_side=112, mode="whole")
    seg = Segmenter.from_models(*tiny_model_set, preset=small, device="cpu")
    with BackgroundServer(create_app(seg, token=token)) as server:
        choose_server(qtbot, plugin, server.url)
        click(qtbot, plugin.model.server.test_btn)  # no token: refused, and it says why
        qtbot.waitUntil(lambda: not plugin.model.server.testing, timeout=15_000)
        assert plugin.errors.message.startswith("Connection failed: ") and "HTTP 401" in plugin.errors.message
        run(qtbot, plugin, timeout=15_000)
        assert "refused the request (HTTP 401)" in plugin.errors.message
        assert plugin.labels_layer_for("pic") is None

        qtbot.keyClicks(plugin.model.server.token_file_edit, str(token_file))
        click(qtbot, plugin.model.server.test_btn)
        qtbot.waitUntil(lambda: plugin.status_label.text().startswith("Connected"), timeout=15_000)
        run(qtbot, plugin)
        assert not plugin.errors.is_error, plugin.errors.message
        assert plugin.labels_layer_for("pic") is not None


def test_server_that_never_answers_cancel_and_timeout(qtbot, plugin: CassWidget, rgb_image) -> None:
    """A server that accepts connections but never replies: the UI never waits on it."""
    viewer = plugin.viewer
    viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat, dog")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)  # the kernel completes connections; nobody reads or answers
        url = f"http://127.0.0.1:{mute.getsockname()[1]}"
        choose_server(qtbot, plugin, url)

        start = time.perf_counter()
        click(qtbot, plugin.segment_btn)
        # The click returns at once (a blocking request would wait for its 300 s timeout).
        assert time.perf_counter() - start < 5.0
        assert plugin.is_running
        qtbot.wait(500)
        assert plugin.is_running  # still waiting for the mute server, in the worker
        click(qtbot, plugin.cancel_btn)
        qtbot.waitUntil(lambda: not plugin.is_running, timeout=5_000)  # cancel polls every 50 ms
        assert plugin.status_label.text().startswith("cancelled")
        assert plugin.labels_layer_for("pic") is None

        plugin.model.server.request_timeout = 2.0  # a new factory -> a new client with it
        seconds = run(qtbot, plugin, timeout=20_000)
        assert 2.0 <= seconds < 20
        assert plugin.segmenter.url == url and plugin.segmenter.timeout == 2.0
        assert plugin.errors.is_error
        assert plugin.errors.message.startswith(f"The napari-cass server at {url} did not answer in time")
        assert plugin.labels_layer_for("pic") is None


def test_server_settings_are_remembered_but_not_a_public_token(qtbot, make_napari_viewer, tiny_factory,
                                                               tmp_path, monkeypatch) -> None:
    from conftest import open_plugin

    from napari_cass.plugin._server_panel import SESSION
    from napari_cass.plugin._settings import settings_path

    monkeypatch.setitem(SESSION, "token", "")  # restored after the test
    viewer = make_napari_viewer(show=True)
    dock, w = open_plugin(viewer, tiny_factory)
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    os.chmod(path, 0o644)  # readable by others: the pasted token must not be written there
    choose_server(qtbot, w, "http://gpu-box:8765")
    qtbot.keyClicks(w.model.server.token_edit, "pasted-secret-token-0123456789")
    viewer.window.remove_dock_widget(dock)
    saved_text = path.read_text()
    saved = json.loads(saved_text)
    assert saved["device"] == SERVER_DEVICE and saved["server_url"] == "http://gpu-box:8765"
    assert "pasted-secret" not in saved_text

    dock, w = open_plugin(viewer, tiny_factory)  # same session: the token is still there
    assert w.device_combo.currentText() == SERVER_DEVICE
    qtbot.waitUntil(w.model.server.isVisible, timeout=5_000)  # the server fields are shown again
    assert w.model.server.url_edit.text() == "http://gpu-box:8765"
    assert w.model.server.token_edit.text() == "pasted-secret-token-0123456789"
    factory = w.model.server.factory()
    assert factory.token == "pasted-secret-token-0123456789" and factory.token_file is None
    assert w.model.server.factory() is factory  # same fields: same client on the next run
    os.chmod(path, 0o600)  # private settings file: now the token may be remembered
    viewer.window.remove_dock_widget(dock)
    assert json.loads(path.read_text())["server_token"] == "pasted-secret-token-0123456789"

    SESSION["token"] = ""  # a new napari session reads it back from the private file
    dock, w = open_plugin(viewer, tiny_factory)
    assert w.model.server.token_edit.text() == "pasted-secret-token-0123456789"
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file-0123456789abcdef\n")
    qtbot.keyClicks(w.model.server.token_file_edit, str(token_file))
    new = w.model.server.factory()
    assert new is not factory and new.token_file == str(token_file) and new.token is None
    viewer.window.remove_dock_widget(dock)
    saved = json.loads(path.read_text())  # a token file: its path only, never a token
    assert saved["server_token_file"] == str(token_file) and saved["server_token"] == ""


def test_token_file_readable_by_others_is_a_clear_error(qtbot, plugin: CassWidget, rgb_image,
                                                       tmp_path) -> None:
    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat")
    token_file = tmp_path / "token"
    token_file.write_text("0123456789abcdef0123\n")
    os.chmod(token_file, 0o644)
    choose_server(qtbot, plugin, "http://127.0.0.1:9")
    qtbot.keyClicks(plugin.model.server.token_file_edit, str(token_file))
    run(qtbot, plugin, timeout=15_000)
    assert plugin.errors.message == (f"Token file {token_file} can be read by other users; "
                                     f"run 'chmod 600 {token_file}'.")
    plugin.model.server.url_edit.clear()
    assert not plugin.segment()
    assert plugin.errors.message.startswith("No server URL: type the address")


def test_background_word_that_is_a_class_is_refused(qtbot, plugin: CassWidget, rgb_image,
                                                    tiny_factory) -> None:
    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "sky, car")
    plugin.class_table.background_edit.setText("wall, Sky")
    click(qtbot, plugin.segment_btn)
    assert not plugin.is_running and tiny_factory.calls == []
    assert plugin.errors.message == (
        "The background word 'Sky' is also the class 'sky': a word can describe only one class, "
        "and the class could never win. Remove 'Sky' from the background words, or remove the class.")
    assert plugin.labels_layer_for("pic") is None
    plugin.class_table.background_edit.setText("wall")
    run(qtbot, plugin)
    assert plugin.labels_layer_for("pic") is not None and not plugin.errors.is_error


@pytest.mark.parametrize("error", [IsADirectoryError, NotADirectoryError])
def test_folder_errors_are_user_errors(qtbot, plugin: CassWidget, rgb_image, tmp_path, error) -> None:
    plugin.viewer.add_image(rgb_image, name="pic")
    set_classes(qtbot, plugin, "cat")
    weights = tmp_path / "weights"
    weights.mkdir()

    def factory(clip, vfm, method, preset, device):
        if error is IsADirectoryError:
            weights.read_bytes()  # what reading weights from a folder does
        (weights / "x").mkdir()
        (weights / "x" / "y").write_text("")
        (weights / "x" / "y" / "z").read_bytes()  # a file where a folder was expected

    plugin.segmenter_factory = factory
    run(qtbot, plugin)
    message = plugin.errors.message
    assert plugin.errors.is_error and "Segmentation failed" not in message
    if error is IsADirectoryError:
        assert message == f"{weights} is a folder where a file was expected: give the file's path."
    else:
        assert message == (f"{weights / 'x' / 'y' / 'z'} goes through a file as if it were a folder: "
                           "check the path.")
