"""The viewer shortcuts of the dock, bound on open and unbound on close.

Only keys napari 0.9 leaves free are used (see ``SHORTCUTS``); a key someone
else bound first is left to them. ``unbind`` removes exactly what ``bind``
added, so reopening the dock binds again without "already bound" warnings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._run_panel import SHORTCUTS

__all__ = ["Shortcuts"]


class Shortcuts:
    """Bind ``SHORTCUTS`` actions on a viewer (a ``PublicOnlyProxy`` is fine)."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.bound: list[str] = []

    def bind(self, actions: dict[str, Callable[[], Any]]) -> list[str]:
        """Bind each action's key; returns the keys that were already taken."""
        taken = []
        for name, key in SHORTCUTS.items():
            action = actions[name]
            try:
                self.viewer.bind_key(key, lambda _viewer, _a=action: _a(), overwrite=False)
                self.bound.append(key)
            except ValueError:  # already bound by someone else: keep theirs
                taken.append(key)
        return taken

    def unbind(self) -> None:
        for key in self.bound:
            try:
                self.viewer.bind_key(key, None)
            except (ValueError, KeyError):
                pass
        self.bound = []
