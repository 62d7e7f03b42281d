"""Qt-free input/output shared by the CLI, the napari plugin, batch runners and servers.

Label images (indexed PNG / uint16 TIFF), ``classes.json``, quick-look overlays,
COCO annotations, dataset folders, input images read under a pixel limit, and the
output folders of segmentation runs (planned names, resume, consistent class tables).
Every writer refuses to overwrite unless asked to, and writes atomically.
"""

from __future__ import annotations

from ._atomic import atomic_write, check_targets
from ._classes_json import CLASSES_FORMAT, class_words, read_classes_json, read_text_utf8, write_classes_json
from ._coco import labels_to_coco
from ._dataset import export_dataset_item
from ._images import (
    BYTES_PER_PIXEL,
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    MAX_PIXELS_ENV,
    ImageDecodeError,
    ImageTooLargeError,
    check_pixel_limit,
    image_size,
    max_decoded_bytes,
    max_pixels_limit,
    open_picture,
    parse_pixel_count,
    read_image,
    read_tiff,
)
from ._masks import mask_suffix_for, read_label_image, write_indexed_png, write_label_tiff
from ._names import printable, safe_filename, unique_filenames
from ._overlay import overlay_labels, to_uint8_rgb
from ._palette import label_palette
from ._plan import OutputPlan, PlannedImage, check_writable_folder, list_images, plan_outputs
from ._run_folder import (
    FolderDecision,
    OutputConflictError,
    RunClasses,
    RunLock,
    check_output_folder,
    clean_temp_files,
    image_done,
    image_state,
    start_run,
    write_image_outputs,
    write_missing_overlays,
)

__all__ = [
    "mask_suffix_for",
    "BYTES_PER_PIXEL",
    "CLASSES_FORMAT",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS_ENV",
    "FolderDecision",
    "ImageDecodeError",
    "ImageTooLargeError",
    "OutputConflictError",
    "OutputPlan",
    "PlannedImage",
    "RunClasses",
    "RunLock",
    "atomic_write",
    "check_output_folder",
    "check_pixel_limit",
    "check_targets",
    "check_writable_folder",
    "class_words",
    "clean_temp_files",
    "export_dataset_item",
    "image_done",
    "image_size",
    "image_state",
    "label_palette",
    "labels_to_coco",
    "list_images",
    "max_decoded_bytes",
    "max_pixels_limit",
    "open_picture",
    "overlay_labels",
    "parse_pixel_count",
    "plan_outputs",
    "printable",
    "read_classes_json",
    "read_image",
    "read_tiff",
    "read_label_image",
    "read_text_utf8",
    "safe_filename",
    "start_run",
    "to_uint8_rgb",
    "unique_filenames",
    "write_classes_json",
    "write_image_outputs",
    "write_missing_overlays",
    "write_indexed_png",
    "write_label_tiff",
]
