"""Pre-labels where teams already annotate: Label Studio and CVAT.

- :mod:`.label_studio`: ``napari-cass serve --label-studio URL`` answers as a Label
  Studio ML backend (``/setup``, ``/predict``, ``/webhook``), BrushLabels in Label
  Studio's RLE.
- :mod:`.cvat`: a ``cvat-sdk`` auto-annotation function (``cvat-cli task auto-annotate
  TASK --function-module napari_cass.integrations.cvat``), mask shapes per label.
- ``napari-cass convert``: napari-cass folders to Label Studio pre-annotation JSON and
  Label Studio JSON exports back to dataset folders.

Importing this package imports neither FastAPI nor cvat-sdk nor torch.
"""

from __future__ import annotations

from ._ls_config import BrushTarget, LabelConfigError, brush_target, label_config_xml
from ._ls_rle import RLEError, decode_rle, encode_rle, mask_from_rle

__all__ = [
    "BrushTarget",
    "LabelConfigError",
    "RLEError",
    "brush_target",
    "decode_rle",
    "encode_rle",
    "label_config_xml",
    "mask_from_rle",
]
