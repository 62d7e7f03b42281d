"""The napari plugin: a thin Qt layer over :mod:`napari_cass.engine`.

napari finds it through ``napari.yaml``; the public names are the dock widget
and the writers. Everything else is private (one idea per module).
"""

from __future__ import annotations

__all__ = ["CassWidget", "default_segmenter_factory"]


def __getattr__(name: str):  # lazy: importing the package must not import Qt
    if name in __all__:
        from . import _widget

        return getattr(_widget, name)
    raise AttributeError(name)
