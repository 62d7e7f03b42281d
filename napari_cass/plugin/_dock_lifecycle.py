"""The dock's lifecycle: save and let go when the dock or the viewer closes.

napari's dock close button takes the widget out of its dock (``setParent(None)``)
without closing it, and closing the viewer window closes neither: the mixin
watches all three and runs :meth:`cleanup` once. A run still going is
cancelled and waited for (see :meth:`RunController.shutdown`), so nothing it
computes reaches a layer, a file or a deleted Qt object afterwards.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QEvent, QObject

from ._settings import save_settings

__all__ = ["DockLifecycleMixin"]


class DockLifecycleMixin:
    """Mixed into :class:`~._widget.CassWidget` (a ``QWidget``)."""

    def cleanup(self) -> None:
        """Save, unbind the shortcuts, disconnect from the viewer (the dock is closing)."""
        if self._closed:
            return
        self._closed = True
        self.batch.close()
        self.shortcuts.unbind()
        self.runner.shutdown()
        self.inputs.disconnect_viewer()
        self.sync.disconnect_all()
        if self._window is not None:
            self._window.removeEventFilter(self)
            self._window = None
        save_settings(self.current_settings())

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if self.parent() is not None:
            self._docked = True
        window = self.window()
        if window is not self and window is not self._window:
            if self._window is not None:
                self._window.removeEventFilter(self)
            window.installEventFilter(self)  # the viewer window closing: save first
            self._window = window

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if obj is self._window and event.type() == QEvent.Type.Close:
            self.cleanup()
        return False

    def event(self, event: QEvent) -> bool:
        # napari's dock close button takes the widget out of its dock (setParent(None))
        # without closing it: that is the moment to clean up.
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self.cleanup()
        return super().event(event)

    def closeEvent(self, event: Any) -> None:
        self.cleanup()
        super().closeEvent(event)
