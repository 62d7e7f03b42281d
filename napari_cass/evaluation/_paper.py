"""The CASS paper's published numbers (CVPR 2025), to print beside ours.

Only the values the project's algorithm contract lists are here: Table 1 (mIoU,
CLIP ViT-B/16 + DINO ViT-B/8) and Table 3 (ablations on VOC21 / PC59 / C-Stf).
Table 2 (pAcc) and Table 4 (other backbones) are not listed: we print "not listed"
rather than guess.
"""

from __future__ import annotations

from typing import Mapping

__all__ = [
    "ABLATIONS",
    "PAPER_TABLE1_MIOU",
    "PAPER_TABLE3_MIOU",
    "PAPER_AVERAGE_MIOU",
    "PAPER_BACKBONE",
    "paper_miou",
    "table3_row",
]

# Column names of Table 1 for the dataset registry names.
PAPER_TABLE1_MIOU: dict[str, float] = {
    "voc21": 65.8,
    "context60": 36.7,
    "coco_object": 37.8,
    "voc20": 87.8,
    "context59": 40.2,
    "coco_stuff": 26.7,
    "cityscapes": 39.4,
    "ade20k": 20.4,
}
PAPER_AVERAGE_MIOU = 44.4
PAPER_BACKBONE = ("ViT-B-16", "dino_vitb8")

# --ablation switch -> Segmenter keyword argument set to False.
ABLATIONS: dict[str, str] = {
    "no-matching": "matching",
    "no-low-rank": "low_rank",
    "no-eigenscaling": "eigenscaling",
    "no-ops": "presence_prior",
    "no-ota": "text_adjustment",
    "no-vfm": "vfm_graph",
}

# Table 3 rows: (name, switches turned off) -> mIoU on voc21 / context59 / coco_stuff.
# Rows are cumulative: each adds one component to the one above.
PAPER_TABLE3_MIOU: list[tuple[str, frozenset[str], dict[str, float]]] = [
    ("vanilla (CLIP only)", frozenset({"no-vfm", "no-ops", "no-ota"}),
     {"voc21": 58.9, "context59": 35.3, "coco_stuff": 23.4}),
    ("+ VFM (sequential)",
     frozenset({"no-matching", "no-low-rank", "no-eigenscaling", "no-ops", "no-ota"}),
     {"voc21": 62.5, "context59": 36.9, "coco_stuff": 24.5}),
    ("+ matching", frozenset({"no-low-rank", "no-eigenscaling", "no-ops", "no-ota"}),
     {"voc21": 63.2, "context59": 38.0, "coco_stuff": 25.4}),
    ("+ low rank", frozenset({"no-eigenscaling", "no-ops", "no-ota"}),
     {"voc21": 64.5, "context59": 38.6, "coco_stuff": 25.7}),
    ("+ eigenscaling", frozenset({"no-ops", "no-ota"}),
     {"voc21": 64.8, "context59": 39.1, "coco_stuff": 25.9}),
    ("+ OPS", frozenset({"no-ota"}),
     {"voc21": 65.0, "context59": 39.6, "coco_stuff": 26.4}),
    ("+ OTA (full CASS)", frozenset(),
     {"voc21": 65.8, "context59": 40.2, "coco_stuff": 26.7}),
]
# Without the VFM graph, the graph switches do nothing.
_GRAPH_SWITCHES = frozenset({"no-matching", "no-low-rank", "no-eigenscaling"})


def table3_row(ablations: frozenset[str] | set[str]) -> str | None:
    """Name of the Table 3 row an ablation set reproduces, or None."""
    key = frozenset(ablations)
    if "no-vfm" in key:
        key = key - _GRAPH_SWITCHES
    for name, switches, _ in PAPER_TABLE3_MIOU:
        if key == switches:
            return name
    return None


def paper_miou(
    dataset: str,
    *,
    method: str = "cass",
    clip: str = "ViT-B-16",
    vfm: str = "dino_vitb8",
    preset: str | None = None,
    ablations: frozenset[str] | set[str] = frozenset(),
    extra_options: Mapping[str, object] | None = None,
) -> tuple[float | None, str]:
    """The paper's mIoU for this exact setting, and where it comes from.

    Returns ``(None, reason)`` when the paper has no figure for the setting (another
    method, backbone, preset or ablation), so the report can say why.
    """
    if dataset not in PAPER_TABLE1_MIOU:
        return None, "not a paper benchmark"
    if method != "cass":
        return None, f"not in the paper's tables for method {method!r} as run here"
    if (clip, vfm) != PAPER_BACKBONE:
        return None, "Table 4 (other backbones): not listed"
    if preset is not None and preset != dataset:
        return None, f"paper uses preset {dataset!r}, this run used {preset!r}"
    if extra_options:
        return None, "custom options: no paper figure"
    key = frozenset(ablations)
    if not key:
        return PAPER_TABLE1_MIOU[dataset], "Table 1"
    for name, switches, values in PAPER_TABLE3_MIOU:
        if table3_row(key) == name:
            if dataset in values:
                return values[dataset], f"Table 3, row '{name}'"
            return None, "Table 3 covers only voc21, context59 and coco_stuff"
    return None, "this ablation combination is not a row of Table 3"
