"""Evaluation harness: benchmark readers, mmseg-identical metrics, the ``eval`` command.

Reproduces the CASS paper's tables on the standard benchmarks and compares methods
on any labelled folder exported by napari-cass. Qt-free. Names are imported on
first use so that building the command-line parser does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # datasets
    "DATASETS": "._datasets",
    "PAPER_DATASETS": "._datasets",
    "Sample": "._datasets",
    "SegDataset": "._datasets",
    "VOC21Dataset": "._datasets",
    "VOC20Dataset": "._datasets",
    "Context60Dataset": "._datasets",
    "Context59Dataset": "._datasets",
    "COCOStuffDataset": "._datasets",
    "COCOObjectDataset": "._datasets",
    "ADE20KDataset": "._datasets",
    "CityscapesDataset": "._datasets",
    "FolderDataset": "._datasets",
    "get_dataset": "._datasets",
    "load_image": "._datasets",
    "load_label_map": "._datasets",
    # metrics
    "IoUAccumulator": "._metrics",
    "intersect_and_union": "._metrics",
    "iou_from_counts": "._metrics",
    # paper numbers
    "ABLATIONS": "._paper",
    "PAPER_TABLE1_MIOU": "._paper",
    "PAPER_TABLE3_MIOU": "._paper",
    "PAPER_AVERAGE_MIOU": "._paper",
    "paper_miou": "._paper",
    "table3_row": "._paper",
    # running
    "RunSpec": "._runner",
    "EvalRun": "._runner",
    "evaluate": "._runner",
    "finish_run": "._results",
    "scan_dataset": "._prescan",
    "ScanResult": "._prescan",
    "segment_for_dataset": "._runner",
    # command line
    "add_eval_parser": "._cli",
    "run_eval": "._cli",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from ._cli import add_eval_parser, run_eval
    from ._datasets import (
        DATASETS, PAPER_DATASETS, ADE20KDataset, CityscapesDataset, COCOObjectDataset,
        COCOStuffDataset, Context59Dataset, Context60Dataset, FolderDataset, Sample, SegDataset,
        VOC20Dataset, VOC21Dataset, get_dataset, load_image, load_label_map,
    )
    from ._metrics import IoUAccumulator, intersect_and_union, iou_from_counts
    from ._paper import (
        ABLATIONS, PAPER_AVERAGE_MIOU, PAPER_TABLE1_MIOU, PAPER_TABLE3_MIOU, paper_miou, table3_row,
    )
    from ._prescan import ScanResult, scan_dataset
    from ._results import EvalRun, finish_run
    from ._runner import RunSpec, evaluate, segment_for_dataset
