"""The Export section: add the current image and its labels to a dataset folder.

Never overwrites: when the folder already holds files of that name, the user is
told which ones and what to do in the GUI's own terms (another folder, or
delete them), not the API's ``overwrite=True``.

The image is written as the segmentation saw it: 8-bit through the layer's
contrast limits (:func:`._layer_inputs.engine_image`), so a float image shown
with limits (0, 0.01) is exported as displayed, not almost black.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QFileDialog, QLabel, QPushButton, QVBoxLayout, QWidget

from ._classes import META_KEY, LabelClasses
from ._layer_inputs import engine_image

__all__ = ["ExportPanel", "export_item"]


def export_item(folder: str | Path, image: Any, labels: Any, fallback: LabelClasses) -> dict[str, Path]:
    """Write ``images/<name>.png``, ``masks/<name>.png`` and ``classes.json`` into ``folder``.

    The image goes through :func:`engine_image` (NaN refused, contrast limits applied,
    uint8), exactly like the engine's input. Raises ``ValueError`` with a GUI-worded
    message when the item cannot be written.
    """
    from napari_cass.io import export_dataset_item, safe_filename

    data = np.asarray(image.data[0] if image.multiscale else image.data)
    if data.ndim - (1 if image.rgb else 0) != 2:
        raise ValueError(
            "Dataset export takes 2-D images. Save a stack's labels with File > Save Selected "
            "Layer(s) and a .tif name (one page per slice)."
        )
    shown = engine_image(data, getattr(image, "contrast_limits", None), image.name, image.rgb)
    meta = labels.metadata.get(META_KEY)
    classes = LabelClasses.from_meta(meta) if meta else fallback
    rows = classes.to_rows(np.asarray(labels.data))  # class ids -> row k = label k
    try:
        return export_dataset_item(
            folder, image.name, shown, rows, classes.names, classes.colors,
            overwrite=False, synonyms=classes.synonyms,
            ignore_class=classes.ignore_row, things=classes.thing_rows or None,
        )
    except FileExistsError:
        stem = safe_filename(image.name)
        raise ValueError(
            f"{folder} already holds '{stem}' (images/{stem}.png, masks/{stem}.png) or a "
            "classes.json with other classes. Choose another folder, or delete those files "
            "and export again."
        ) from None


class ExportPanel(QWidget):
    """Export button; ``export(folder)`` does the work (also for scripts and tests)."""

    def __init__(self, export: Callable[[str], Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._export = export
        self.export_btn = QPushButton("Export to dataset folder…")
        self.export_btn.setToolTip(
            "Write images/<name>.png, masks/<name>.png and classes.json (mmsegmentation / "
            "torchvision layout). Existing files are never replaced."
        )
        self.export_btn.clicked.connect(lambda _checked=False: self._dialog())
        hint = QLabel(
            "One mask: File > Save Selected Layer(s) as .png, .tif (stacks: one page per slice) "
            "or .json (COCO)."
        )
        hint.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.export_btn)
        layout.addWidget(hint)

    def _dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export to dataset folder")
        if folder:
            self._export(folder)
