"""The "server…" device: segment on a remote ``napari-cass serve`` instead of this machine.

Choosing "server…" in the Model section's device list shows a URL field, a token
file field, a token field and a "Test connection" button. Runs then use
:class:`napari_cass.server.RemoteSegmenter` (same ``segment`` API and result as the
local engine), built in the run's worker thread like a local model, through a
:class:`RemoteFactory` that the widget hands to its run controller instead of
``segmenter_factory``. One factory object per (URL, token, token file): the run
controller rebuilds its segmenter when the factory object changes, so a changed URL
or token means a new client, and the same settings re-use the connection.

Tokens: a token *file* is remembered by its path only. A pasted token is written to
the settings file only when that file is readable by its owner alone (see
:func:`napari_cass.plugin._settings.save_settings`); otherwise it is kept in memory for this
napari session (:data:`SESSION`), so reopening the dock does not ask for it again.
``napari_cass.server`` is imported only when the server is used (it never needs
FastAPI on this side).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qtpy.QtWidgets import (
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

__all__ = ["SERVER_DEVICE", "SESSION", "RemoteFactory", "ServerPanel"]

#: The device-list entry that means "a napari-cass server".
SERVER_DEVICE = "server…"
#: Seconds to wait for a connection (the Test button and every run).
CONNECT_TIMEOUT = 5.0
#: What is kept for this napari session only (a pasted token not safe to store).
SESSION: dict[str, str] = {"token": ""}


@dataclass(frozen=True, eq=False)
class RemoteFactory:
    """A ``segmenter_factory`` that builds a :class:`~napari_cass.server.RemoteSegmenter`.

    Called by the run controller with the widget's model choices; ``clip``, ``vfm`` and
    ``device`` are the server's business (it loaded its models at start) and are ignored.
    ``eq=False``: identity matters, a new object means a new client.
    """

    url: str
    token: str | None = None
    token_file: str | None = None
    timeout: float = 300.0

    def __call__(self, clip: str, vfm: str, method: str, preset: str, device: str) -> Any:
        from napari_cass.server import RemoteSegmenter

        return RemoteSegmenter(self.url, token=self.token, token_file=self.token_file,
                               method=method, preset=preset, timeout=self.timeout,
                               connect_timeout=CONNECT_TIMEOUT)

    def test_connection(self) -> str:
        """``"Connected: …"`` or ``"Connection failed: …"``; never raises (runs in a worker)."""
        try:
            from napari_cass.server import RemoteSegmenter

            remote = RemoteSegmenter(self.url, token=self.token, token_file=self.token_file,
                                     connect_timeout=CONNECT_TIMEOUT)
        except (ValueError, RuntimeError, OSError) as err:  # bad URL, unreadable token file
            return f"Connection failed: {err}"
        try:
            return remote.test_connection()
        finally:
            remote.close()


class ServerPanel(QWidget):
    """URL, token file, token and "Test connection"; shown while "server…" is the device.

    Parameters
    ----------
    say : callable
        ``say(kind, message)`` with kind "info" or "error": where test results go
        (the dock's status area).
    """

    #: Seconds one remote run may take, queue time included (public: scripts may lower it).
    request_timeout: float = 300.0

    def __init__(self, say: Callable[[str, str], None] | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.say = say or (lambda kind, message: None)
        self.url_edit = QLineEdit()
        self.url_edit.setPlaceholderText("http://gpu-box:8765")
        self.url_edit.setToolTip("Address of a 'napari-cass serve' server.")
        self.token_file_edit = QLineEdit()
        self.token_file_edit.setPlaceholderText("~/.config/napari-cass/server-token")
        self.token_file_edit.setToolTip(
            "File holding the server's token (first line; chmod 600). Only its path is remembered.")
        self.token_edit = QLineEdit()
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("or paste the token")
        self.token_edit.setToolTip(
            "The server's token (not needed for a server on this machine without one). Kept for "
            "this session; remembered only if the settings file is readable by you alone.")
        self.token_edit.setText(SESSION["token"])
        self.token_edit.textChanged.connect(lambda text: SESSION.__setitem__("token", text))
        self.test_btn = QPushButton("Test connection")
        self.test_btn.clicked.connect(lambda _checked=False: self.test_connection())
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.test_btn)
        row.addWidget(self.result_label, 1)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Server URL:", self.url_edit)
        form.addRow("Token file:", self.token_file_edit)
        form.addRow("Token:", self.token_edit)
        form.addRow(row)
        self._factory: RemoteFactory | None = None
        self._tester: Any = None

    # ------------------------------------------------------------- factory
    def factory(self) -> RemoteFactory:
        """The factory for the current fields (the same object while they do not change).

        Raises ``ValueError`` (shown by the widget) when no URL is given.
        """
        url = self.url_edit.text().strip()
        if not url:
            raise ValueError("No server URL: type the address of a 'napari-cass serve' server "
                             "(e.g. http://gpu-box:8765) under Model > Server URL, or choose "
                             "another device.")
        token_file = self.token_file_edit.text().strip() or None
        token = None if token_file else (self.token_edit.text().strip() or None)
        wanted = (url, token, token_file, float(self.request_timeout))
        f = self._factory
        if f is None or (f.url, f.token, f.token_file, f.timeout) != wanted:
            self._factory = RemoteFactory(*wanted)
        return self._factory

    # ---------------------------------------------------------- test button
    @property
    def testing(self) -> bool:
        return self._tester is not None

    def test_connection(self) -> bool:
        """Check the server in a worker thread; the answer goes to the status area."""
        from napari.qt.threading import create_worker

        if self._tester is not None:
            return False
        try:
            factory = self.factory()
        except ValueError as err:
            self._show(f"Connection failed: {err}")
            return False
        self.test_btn.setEnabled(False)
        self.result_label.setText("connecting…")
        worker = create_worker(factory.test_connection)
        worker.returned.connect(self._show)
        worker.finished.connect(self._tested)
        self._tester = worker
        worker.start()
        return True

    def _tested(self) -> None:
        self._tester = None
        try:
            self.test_btn.setEnabled(True)
        except RuntimeError:  # the dock was closed meanwhile
            pass

    def _show(self, message: str) -> None:
        try:
            self.result_label.setText(message.split(":")[0])
            self.result_label.setToolTip(message)
        except RuntimeError:  # the dock was closed meanwhile
            return
        self.say("info" if message.startswith("Connected") else "error", message)
