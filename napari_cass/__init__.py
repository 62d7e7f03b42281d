"""napari-cass: open-vocabulary semantic segmentation (CASS) for napari.

Kept deliberately light: importing the package must not import napari, Qt or
torch, so that the CLI and the npe2 manifest discovery stay fast. The engine
lives in :mod:`napari_cass.engine`, file formats in :mod:`napari_cass.io`, and
the napari plugin in :mod:`napari_cass.plugin` (the manifest, ``napari.yaml``,
points to its modules).
"""

from __future__ import annotations

try:  # the installed distribution is the single source of truth
    from importlib.metadata import PackageNotFoundError, version

    __version__: str = version("napari-cass")
except PackageNotFoundError:  # running from a source checkout that is not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
