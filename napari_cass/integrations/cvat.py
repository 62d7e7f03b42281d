"""A CVAT auto-annotation function: CASS masks for the labels you name.

``cvat-sdk``'s detection-function interface: a ``spec`` (the labels, type ``mask``) and
``detect(context, image)`` returning one mask shape per label present in the image
(CASS is semantic segmentation: all pixels of a class form one shape). CVAT matches the
function's labels to the task's labels by name, so name the classes as the task does::

    cvat-cli task auto-annotate 42 --function-module napari_cass.integrations.cvat \\
        -p classes=str:"cat | kitten, dog, grass" -p server=str:http://gpu-box:8765 \\
        -p token_file=str:/home/me/napari-cass-token

Parameters (``-p name=type:value``, passed to :func:`create`): ``classes`` (required;
``|`` separates a class's synonyms, only the first word is the label name), ``background``
(words of a background class, never returned), ``server`` / ``token_file`` / ``ca_file``
(segment on ``napari-cass serve``), else ``device``, ``clip``, ``vfm``, ``method``,
``preset`` for a local engine (``random_weights=bool:true`` only to test the pipeline).
Settings not given with ``-p`` are read from ``NAPARI_CASS_CLASSES``,
``NAPARI_CASS_BACKGROUND``, ``NAPARI_CASS_SERVER`` and ``NAPARI_CASS_TOKEN_FILE``.

CVAT's confidence threshold drops a class whose mean confidence over its pixels is
below it; with "convert masks to polygons" each connected region becomes a polygon.
"""

from __future__ import annotations

import os
import threading
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["CassFunction", "create"]


class CassFunction:
    """A ``cvat_sdk.auto_annotation`` detection function around one CASS engine.

    ``segmenter`` injects an engine (anything with the ``Segmenter.segment`` signature);
    otherwise one is built on first use, remote when ``server`` is given.
    """

    def __init__(self, classes: str | None = None, background: str | None = None, server: str | None = None,
                 token_file: str | None = None, ca_file: str | None = None, device: str = "auto",
                 clip: str = "ViT-B-16", vfm: str = "dino_vitb8", method: str = "cass",
                 preset: str = "interactive", random_weights: bool = False, segmenter: Any = None):
        from ..engine import normalize_classes, with_background

        if not classes or not str(classes).strip():
            raise ValueError('Name the classes: -p classes=str:"cat | kitten, dog" (the names must be '
                             "the task's label names), or set NAPARI_CASS_CLASSES.")
        self.prompts = normalize_classes(str(classes))
        self.background = [w.strip() for w in str(background or "").replace("|", ",").split(",") if w.strip()]
        with_background(self.prompts, self.background or None)  # a word in both is refused now, not per frame
        if token_file and not server:
            raise ValueError("token_file is for server: give the napari-cass server's URL too.")
        self._settings = {"server": server, "token_file": token_file, "ca_file": ca_file, "device": device,
                          "clip": clip, "vfm": vfm, "method": method, "preset": preset,
                          "random_weights": bool(random_weights)}
        self._segmenter = segmenter
        self._lock = threading.Lock()

    @cached_property
    def spec(self):
        """One ``mask`` label per class, ids 0, 1, ... in the order given."""
        import cvat_sdk.auto_annotation as cvataa

        return cvataa.DetectionFunctionSpec(
            labels=[cvataa.label_spec(p.name, i, type="mask") for i, p in enumerate(self.prompts)])

    @property
    def segmenter(self) -> Any:
        with self._lock:
            if self._segmenter is None:
                self._segmenter = self._build()
            return self._segmenter

    def _build(self) -> Any:
        s = self._settings
        if s["server"]:
            from ..server import RemoteSegmenter

            return RemoteSegmenter(s["server"], token_file=s["token_file"], ca_file=s["ca_file"])
        import warnings

        from ..engine import Segmenter

        random = s["random_weights"]
        with warnings.catch_warnings():
            if random:
                warnings.filterwarnings("ignore", message=".*random weights.*", category=UserWarning)
            return Segmenter.from_pretrained(
                clip=s["clip"], clip_weights="random" if random else "openai", vfm=s["vfm"],
                vfm_weights="random" if random else "pretrained", method=s["method"], preset=s["preset"],
                device=s["device"])

    def detect(self, context: Any, image: Any) -> list:
        """Mask (or polygon) shapes of every class present in ``image`` (a PIL image)."""
        import cvat_sdk.auto_annotation as cvataa
        from cvat_sdk.masks import encode_mask

        rgb = np.asarray(image.convert("RGB") if image.mode not in ("RGB", "L", "I;16") else image)
        result = self.segmenter.segment(rgb, self.prompts, background=self.background or None)
        labels = np.asarray(result.labels)
        confidence = np.asarray(result.confidence, dtype=np.float64)
        offset = 1 if result.has_background else 0
        threshold = getattr(context, "conf_threshold", None)
        shapes = []
        for k in range(len(self.prompts)):
            mask = labels == k + offset
            if not mask.any():
                continue
            if threshold is not None and float(confidence[mask].mean()) < threshold:
                continue
            if getattr(context, "conv_mask_to_poly", False):
                shapes.extend(cvataa.polygon(k, points) for points in _polygons(mask))
            else:
                shapes.append(cvataa.mask(k, encode_mask(mask)))
        return shapes


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of ``mask``'s regions as flat ``[x1, y1, x2, y2, ...]`` (3+ points each)."""
    from skimage import measure

    padded = np.pad(mask.astype(np.float32), 1)  # regions touching the border get closed contours
    out = []
    for contour in measure.find_contours(padded, 0.5):
        ys, xs = contour[:, 0] - 1, contour[:, 1] - 1
        if len(contour) < 4 or np.sum(xs * np.roll(ys, -1)) < np.sum(ys * np.roll(xs, -1)):
            continue  # a hole (or a degenerate contour): CVAT polygons have no holes
        simple = measure.approximate_polygon(np.column_stack((xs, ys)), tolerance=0.5)
        if len(simple) > 3:
            simple = simple[:-1]  # closed: the last point repeats the first
        h, w = mask.shape
        simple = np.clip(simple, 0, [w - 1, h - 1])
        if len(simple) >= 3:
            out.append(simple.ravel().tolist())
    return out


_ENVIRONMENT = {"classes": "NAPARI_CASS_CLASSES", "background": "NAPARI_CASS_BACKGROUND",
                "server": "NAPARI_CASS_SERVER", "token_file": "NAPARI_CASS_TOKEN_FILE"}


def create(**kwargs: Any) -> CassFunction:
    """The function ``cvat-cli`` builds: it calls ``create(**parameters)`` of the module, with the
    ``-p name=type:value`` parameters (none given: ``create()``). Settings not given are read
    from ``NAPARI_CASS_CLASSES``, ``NAPARI_CASS_BACKGROUND``, ``NAPARI_CASS_SERVER`` and
    ``NAPARI_CASS_TOKEN_FILE`` when set."""
    for name, variable in _ENVIRONMENT.items():
        if kwargs.get(name) is None and os.environ.get(variable):
            kwargs[name] = os.environ[variable]
    return CassFunction(**kwargs)
