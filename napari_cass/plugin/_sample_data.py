"""Sample photos for File > Open Sample (real images shipped with scikit-image)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["astronaut", "chelsea", "coffee"]

LayerDataTuple = tuple[np.ndarray, dict[str, Any], str]


def _sample(name: str) -> list[LayerDataTuple]:
    # skimage.data is imported lazily: it is only a test/sample dependency.
    try:
        from skimage import data
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The napari-cass sample images come from scikit-image: "
            "install it with `pip install scikit-image`."
        ) from err
    image = getattr(data, name)()
    return [(np.asarray(image), {"name": name, "rgb": True}, "image")]


def astronaut() -> list[LayerDataTuple]:
    """Eileen Collins (NASA): a person, a flag and a spaceship, 512 x 512 RGB."""
    return _sample("astronaut")


def chelsea() -> list[LayerDataTuple]:
    """Chelsea the cat on a blanket, 300 x 451 RGB."""
    return _sample("chelsea")


def coffee() -> list[LayerDataTuple]:
    """A coffee cup on a saucer with a spoon, 400 x 600 RGB."""
    return _sample("coffee")
