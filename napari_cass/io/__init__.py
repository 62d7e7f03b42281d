"""Qt-free input/output shared by the CLI and the napari plugin.

Label images (indexed PNG / uint16 TIFF), ``classes.json``, quick-look overlays,
COCO annotations and dataset folders. Every writer refuses to overwrite unless
asked to, and writes atomically.
"""

from __future__ import annotations

from ._atomic import atomic_write, check_targets
from ._classes_json import CLASSES_FORMAT, read_classes_json, write_classes_json
from ._coco import labels_to_coco
from ._dataset import export_dataset_item
from ._names import safe_filename, unique_filenames
from ._masks import read_label_image, write_indexed_png, write_label_tiff
from ._overlay import overlay_labels, to_uint8_rgb
from ._palette import label_palette

__all__ = [
    "CLASSES_FORMAT",
    "atomic_write",
    "check_targets",
    "export_dataset_item",
    "label_palette",
    "labels_to_coco",
    "overlay_labels",
    "read_classes_json",
    "read_label_image",
    "safe_filename",
    "to_uint8_rgb",
    "unique_filenames",
    "write_classes_json",
    "write_indexed_png",
    "write_label_tiff",
]
