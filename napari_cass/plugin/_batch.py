"""Batch mode's Qt panel: folder pickers, Open / resume, Previous / Next.

The Qt-free :class:`BatchSession` (listing, saving, ``progress.json``) lives in
:mod:`napari_cass.plugin._batch_session` and is re-exported here; the napari side
(layers reused in place, auto-save) is :mod:`napari_cass.plugin._batch_controller`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QWidget,
)

from ._batch_session import IMAGE_SUFFIXES, PROGRESS_FILE, BatchSession

__all__ = [
    "IMAGE_SUFFIXES",
    "PROGRESS_FILE",
    "BatchPanel",
    "BatchSession",
    "remember_folders",
    "remembered_folders",
]

_FOLDERS_FILE = "batch.json"  # the last folders used, next to the widget settings


def _folders_file() -> Path:
    from ._settings import settings_path

    return settings_path().parent / _FOLDERS_FILE


def remembered_folders() -> dict[str, str]:
    """The image and output folders of the last batch opened (empty if none or unreadable)."""
    try:
        data = json.loads(_folders_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k in ("image_dir", "output_dir") if isinstance(v := data.get(k), str)}


def remember_folders(image_dir: Path, output_dir: Path) -> None:
    """Keep the folders for the next napari session (a convenience: failures are ignored)."""
    from napari_cass.io import atomic_write

    doc = {"image_dir": str(image_dir), "output_dir": str(output_dir)}
    try:
        with atomic_write(_folders_file(), overwrite=True) as tmp:
            tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")
    except OSError:
        pass


class BatchPanel(QWidget):
    """Folder pickers and Previous / Next; the widget supplies the napari side."""

    def __init__(
        self,
        on_open: Callable[[str, str], None],
        on_step: Callable[[int], None],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.image_dir = QLineEdit()
        self.image_dir.setPlaceholderText("folder of images")
        self.output_dir = QLineEdit()
        self.output_dir.setPlaceholderText("output folder (images/, masks/, classes.json)")
        browse_in = QPushButton("…")
        browse_out = QPushButton("…")
        browse_in.setMaximumWidth(30)
        browse_out.setMaximumWidth(30)
        browse_in.clicked.connect(lambda: self._browse(self.image_dir, "Image folder"))
        browse_out.clicked.connect(lambda: self._browse(self.output_dir, "Output folder"))
        self.open_btn = QPushButton("Open / resume")
        self.open_btn.setToolTip(
            "Open the folder; resumes at the image you left (progress.json in the output folder)."
        )
        self.prev_btn = QPushButton("◀ Previous")
        self.next_btn = QPushButton("Next ▶")
        self.prev_btn.setToolTip("Save this mask and go to the previous image (Shift+B)")
        self.next_btn.setToolTip("Save this mask and go to the next image (Shift+N)")
        self.status = QLabel("no folder open")
        self.status.setWordWrap(True)
        #: The last thing batch mode had to say about the folder (files skipped, records
        #: ignored); it stays while runs report their progress in the dock's status line.
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setVisible(False)
        for label in (self.status, self.message):  # long names wrap; they never widen the dock
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.open_btn.clicked.connect(
            lambda: on_open(self.image_dir.text().strip(), self.output_dir.text().strip())
        )
        self.prev_btn.clicked.connect(lambda: on_step(-1))
        self.next_btn.clicked.connect(lambda: on_step(1))

        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(QLabel("Images:"), 0, 0)
        grid.addWidget(self.image_dir, 0, 1)
        grid.addWidget(browse_in, 0, 2)
        grid.addWidget(QLabel("Output:"), 1, 0)
        grid.addWidget(self.output_dir, 1, 1)
        grid.addWidget(browse_out, 1, 2)
        grid.addWidget(self.open_btn, 2, 0, 1, 3)
        nav = QHBoxLayout()  # Open on its own row: the dock fits beside napari on a 1366 px screen
        nav.addWidget(self.prev_btn)
        nav.addWidget(self.next_btn)
        grid.addLayout(nav, 3, 0, 1, 3)
        grid.addWidget(self.status, 4, 0, 1, 3)
        grid.addWidget(self.message, 5, 0, 1, 3)
        self.set_session(None)

    def _browse(self, edit: QLineEdit, title: str) -> None:
        folder = QFileDialog.getExistingDirectory(self, title, edit.text())
        if folder:
            edit.setText(folder)

    def fill(self, folders: dict[str, Any] | None) -> None:
        """Put the folders of the last batch into the fields (a reopened dock, a restart)."""
        if not folders:
            return
        self.image_dir.setText(str(folders.get("image_dir") or ""))
        self.output_dir.setText(str(folders.get("output_dir") or ""))
        self.status.setText("last batch: press Open / resume to go on where you left off")

    def set_message(self, text: str) -> None:
        """Show (or, with "", hide) the batch's own message under the counter."""
        self.message.setText(text)
        self.message.setVisible(bool(text))

    def set_session(self, session: BatchSession | None) -> None:
        """Refresh buttons and the 'image i / n' line."""
        has = session is not None
        self.prev_btn.setEnabled(has and session.index > 0)
        self.next_btn.setEnabled(has and session.index < len(session) - 1)
        if session is None:
            self.status.setText("no folder open")
            return
        name = session.current.name
        if name in session.failed:
            state = f"unreadable: {session.failed[name]}"
        else:
            state = "saved" if name in session.saved else "not saved yet"
        text = f"image {session.index + 1} / {len(session)}: {name} ({state})"
        if session.failed:  # e.g. "· 3 unreadable (skipped)"; the reasons in the tooltip
            text += f" · {len(session.failed)} unreadable (skipped)"
        self.status.setText(text)
        self.status.setToolTip("\n".join(f"{n}: {r}" for n, r in sorted(session.failed.items())))
