"""The Qt-free CASS engine: image + class prompts -> semantic segmentation.

Nothing here imports Qt or napari; the plugin, the CLI and the evaluation
harness are built on this public surface.
"""

from ._presets import DEFAULT_PRESET, PRESETS, Preset, get_preset
from ._prompts import (
    BENCHMARK_CLASS_LISTS,
    ClassPrompt,
    benchmark_classes,
    load_class_file,
    normalize_classes,
    parse_classes,
    with_background,
)
from ._result import SegmentationCancelled, SegmentationResult
from ._methods import METHODS
from ._segmenter import Segmenter
from ._device import resolve_device
from ._weights import (
    WeightsNotFoundError,
    build_clip,
    build_vfm,
    cache_dir,
    import_weights,
    weights_status,
)

__all__ = [
    "BENCHMARK_CLASS_LISTS",
    "ClassPrompt",
    "DEFAULT_PRESET",
    "METHODS",
    "PRESETS",
    "Preset",
    "SegmentationCancelled",
    "SegmentationResult",
    "Segmenter",
    "benchmark_classes",
    "get_preset",
    "load_class_file",
    "normalize_classes",
    "parse_classes",
    "resolve_device",
    "WeightsNotFoundError",
    "build_clip",
    "build_vfm",
    "cache_dir",
    "import_weights",
    "weights_status",
    "with_background",
]
