"""The Model and Run sections: what to run with, and the buttons that run it.

Both fit a narrow dock (see :mod:`._compact`): combos ask for a few characters,
the "running on: …" line elides (a server URL can be 200 characters long), and
the Run buttons sit two to a row.
"""

from __future__ import annotations

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QLabel,
    QPushButton,
    QWidget,
)

from ._compact import ElidedLabel, compact_combo
from ._server_panel import SERVER_DEVICE, ServerPanel

__all__ = ["CLIP_BACKBONES", "DEVICES", "SHORTCUTS", "VFM_BACKBONES", "ModelPanel", "RunPanel"]

CLIP_BACKBONES = ("ViT-B-16", "ViT-B-32", "ViT-L-14")
VFM_BACKBONES = ("dino_vitb8", "dino_vits8", "dino_vitb16")
DEVICES = ("auto", "cuda", "mps", "cpu", SERVER_DEVICE)
#: Viewer shortcuts: none is bound by napari 0.9 (Shift+P / Shift+L are Shapes tools).
SHORTCUTS = {
    "segment": "Shift-S",
    "next": "Shift-N",
    "previous": "Shift-B",
    "toggle_labels": "Shift-H",
}


def _key(name: str) -> str:
    return SHORTCUTS[name].replace("-", "+")


class ModelPanel(QWidget):
    """Method, preset, backbones and device."""

    def __init__(self, parent: QWidget | None = None) -> None:
        from napari_cass.engine import METHODS, PRESETS

        super().__init__(parent)
        self.method_combo = QComboBox()
        self.method_combo.addItems(list(METHODS))
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(PRESETS))
        self.preset_combo.setToolTip("Parameter preset: 'interactive' for everyday images.")
        self.clip_combo = QComboBox()
        self.clip_combo.addItems(list(CLIP_BACKBONES))
        self.vfm_combo = QComboBox()
        self.vfm_combo.addItems(list(VFM_BACKBONES))
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.device_combo.setToolTip(f"Where to run: this machine, or '{SERVER_DEVICE}' for a "
                                     "'napari-cass serve' server (e.g. a GPU shared by a team).")
        for combo in (self.method_combo, self.preset_combo, self.clip_combo, self.vfm_combo,
                      self.device_combo):
            compact_combo(combo)
        self.device_label = ElidedLabel("running on: (not loaded yet)")
        self.server = ServerPanel()
        self.server.setVisible(False)
        self.device_combo.currentTextChanged.connect(
            lambda text: self.server.setVisible(text == SERVER_DEVICE))
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Method:", self.method_combo)
        form.addRow("Preset:", self.preset_combo)
        form.addRow("CLIP:", self.clip_combo)
        form.addRow("VFM:", self.vfm_combo)
        form.addRow("Device:", self.device_combo)
        form.addRow("", self.device_label)
        form.addRow(self.server)

    @property
    def uses_server(self) -> bool:
        """True when "server…" is the device: runs go to :attr:`server`'s URL."""
        return self.device_combo.currentText() == SERVER_DEVICE

    def key(self) -> tuple[str, str, str, str, str]:
        """``(clip, vfm, method, preset, device)``."""
        return (
            self.clip_combo.currentText(), self.vfm_combo.currentText(),
            self.method_combo.currentText(), self.preset_combo.currentText(),
            self.device_combo.currentText(),
        )


class RunPanel(QWidget):
    """Segment / Cancel / Undo last run, and the run options."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.replace_all_check = QCheckBox("Replace all")
        self.replace_all_check.setToolTip(
            "Discard manual edits on the next run. Unchecked: pixels you painted, filled or "
            "erased keep their label on a re-run."
        )
        self.confidence_check = QCheckBox("Confidence layer")
        self.confidence_check.setToolTip("Also add the max class probability, to spot doubtful areas.")
        self.refine_check = QCheckBox("Refine boundaries")
        self.refine_check.setToolTip(
            "PAMR (as in the CASS authors' code): boundaries follow the image's edges instead of "
            "the 16-px patch grid. Costs about as much again as the full-resolution stage."
        )
        self.segment_btn = QPushButton(f"Segment ({_key('segment')})")
        self.segment_btn.setToolTip(
            f"Segment the image with the class list ({_key('segment')}). "
            "Changing only the classes re-uses the image's features and is fast."
        )
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.undo_btn = QPushButton("Undo last run")
        self.undo_btn.setToolTip(
            "Put back the labels the last run replaced (your later strokes stay). "
            "Ctrl+Z undoes single strokes."
        )
        self.shortcuts_label = QLabel(
            f"Keys: {_key('segment')} segment · {_key('next')} / {_key('previous')} next / "
            f"previous image · {_key('toggle_labels')} show/hide labels"
        )
        self.shortcuts_label.setWordWrap(True)
        self.shortcuts_label.setToolTip("Viewer shortcuts added by napari-cass (none is a napari default).")
        grid = QGridLayout(self)  # two columns: fits a dock narrow enough for a 1366 px screen
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(self.segment_btn, 0, 0)
        grid.addWidget(self.cancel_btn, 0, 1)
        grid.addWidget(self.undo_btn, 1, 0)
        grid.addWidget(self.replace_all_check, 2, 0, 1, 2)
        grid.addWidget(self.confidence_check, 3, 0, 1, 2)
        grid.addWidget(self.refine_check, 4, 0, 1, 2)
        grid.addWidget(self.shortcuts_label, 5, 0, 1, 2)

    def set_running(self, running: bool) -> None:
        self.segment_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
