"""What a run produced: the EvalRun record, results.json / results.md, the worst images.

Kept apart from the runner so that re-drawing reports never touches the segmentation loop.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from ..io import read_label_image, safe_filename
from ._base import SegDataset
from ._metrics import IoUAccumulator, iou_from_counts
from ._outputs import RunOutputs
from ._paper import paper_miou, table3_row
from ._report import draw_iou_chart, draw_side_by_side, format_markdown, write_json, write_text

if TYPE_CHECKING:  # pragma: no cover
    from ._runner import RunSpec

__all__ = ["EvalRun", "finish_run", "prediction_path", "summarize"]


@dataclass
class EvalRun:
    """Outcome of :func:`evaluate`."""

    spec: RunSpec
    run_dir: Path
    accumulator: IoUAccumulator
    records: list[dict[str, Any]]
    num_new: int
    num_cached: int
    num_total: int
    device: str = "n/a"
    new_seconds: list[float] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    recomputed: dict[str, str] = field(default_factory=dict)
    outputs: RunOutputs | None = None  # what the run folder's runs wrote (made on first use)


def prediction_path(run_dir: Path, image_id: str, num_classes: int) -> Path:
    stem = safe_filename(image_id)
    if stem != image_id:  # keep distinct ids distinct after sanitising
        stem += "_" + hashlib.sha1(image_id.encode("utf-8")).hexdigest()[:6]
    return run_dir / "predictions" / (stem + (".png" if num_classes <= 256 else ".tif"))


def _per_image_miou(rec: dict[str, Any]) -> float:
    iou = iou_from_counts(np.asarray(rec["intersect"]), np.asarray(rec["union"]))
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def finish_run(run: EvalRun, dataset: SegDataset, *, worst: int = 5) -> dict[str, Any]:
    """Write results.json, results.md, the IoU chart and the worst-image overlays."""
    spec, acc, run_dir = run.spec, run.accumulator, run.run_dir
    paper_value, paper_source = paper_miou(
        spec.dataset,
        method=spec.method,
        clip=spec.clip,
        vfm=spec.vfm,
        preset=spec.preset,
        ablations=frozenset(spec.ablations),
        extra_options=spec.extra_options,
    )
    all_seconds = [float(r.get("seconds", float("nan"))) for r in run.records]
    seconds = run.new_seconds or all_seconds
    per_class = [
        {
            "name": name,
            "iou": _pct(iou),
            "acc": _pct(a),
            "intersect": int(i),
            "union": int(u),
            "pred_pixels": int(p),
            "label_pixels": int(lab),
        }
        for name, iou, a, i, u, p, lab in zip(
            dataset.class_names, acc.per_class_iou, acc.per_class_acc,
            acc.intersect, acc.union, acc.pred_area, acc.label_area,
        )
    ]
    result: dict[str, Any] = {
        "dataset": spec.dataset,
        "dataset_title": dataset.title,
        "root": spec.root,
        "split": spec.split,
        "method": spec.method,
        "preset": spec.preset,
        "options": spec.options,
        "ablations": sorted(spec.ablations),
        "ablation_label": (
            (table3_row(frozenset(spec.ablations)) or ",".join(sorted(spec.ablations)))
            if spec.ablations else None
        ),
        "models": {"clip": spec.clip, "vfm": spec.vfm, "random_weights": spec.random_weights},
        "device": run.device,
        "num_images": len(run.records),
        "num_images_total": run.num_total,
        "num_images_new": run.num_new,
        "num_images_cached": run.num_cached,
        "num_images_recomputed": len(run.recomputed),
        "num_images_skipped": len(run.skipped),
        "skipped": run.skipped,
        "ignore_index": dataset.ignore_index,
        "miou": _pct(acc.miou),
        "pacc": _pct(acc.pacc),
        "macc": _pct(acc.macc),
        "paper": {"miou": paper_value, "pacc": None, "source": paper_source},
        "seconds_per_image": float(np.nanmean(seconds)) if seconds else None,
        "signature_hash": spec.signature_hash,
        "signature": spec.signature(),
        "accumulator": acc.state_dict(),
        "per_class": per_class,
        "run_dir": str(run_dir),
    }
    result["worst"] = _write_worst(run, dataset, worst)
    draw_iou_chart(
        run_dir / "per_class_iou.png",
        dataset.class_names,
        acc.per_class_iou,
        title=(
            f"{dataset.title} ({spec.dataset}), {spec.method}: mIoU {_fmt_pct(acc.miou)}"
            + (f", paper {paper_value:.1f} (red line)" if paper_value is not None else "")
            + (" [RANDOM WEIGHTS]" if spec.random_weights else "")
        ),
        paper_miou=paper_value,
    )
    write_json(run_dir / "results.json", result)
    write_text(run_dir / "results.md", format_markdown(result))
    return result


def _pct(x: float) -> float | None:
    return None if x is None or math.isnan(float(x)) else round(100.0 * float(x), 4)


def _fmt_pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}"


def _write_worst(run: EvalRun, dataset: SegDataset, n: int) -> list[dict[str, Any]]:
    worst_dir = run.run_dir / "worst"
    if run.outputs is None:
        run.outputs = RunOutputs(run.run_dir)
    run.outputs.remove("worst")  # regenerated on every run: only the drawings a run recorded go
    if n <= 0:
        return []
    scored = [(m, r["id"]) for r in run.records if not math.isnan(m := _per_image_miou(r))]
    scored.sort(key=lambda t: t[0])
    out: list[dict[str, Any]] = []
    for rank, (score, image_id) in enumerate(scored[:n], start=1):
        pred_path = prediction_path(run.run_dir, image_id, dataset.num_classes)
        if not pred_path.is_file():
            continue
        _, image, gt = dataset[dataset.index_of(image_id)]
        pred = read_label_image(pred_path)
        path = run.outputs.claim(worst_dir / f"{rank:03d}_{pred_path.stem}.png")
        draw_side_by_side(
            path, image, pred, gt, dataset.num_classes,
            has_background=dataset.has_background, ignore_index=dataset.ignore_index,
            caption=f"{image_id} (mIoU {100 * score:.1f})",
        )
        out.append({
            "image_id": image_id,
            "miou": round(100 * score, 4),
            "file": path.relative_to(run.run_dir).as_posix(),
        })
    return out


def summarize(results: Iterable[dict[str, Any]]) -> str:
    """Markdown table over several runs, with the paper's average where it applies."""
    from ._paper import PAPER_AVERAGE_MIOU, PAPER_TABLE1_MIOU
    from ._report import format_summary_table

    results = list(results)
    text = format_summary_table(results)
    ours = [r["miou"] for r in results if r["miou"] is not None]
    if {r["dataset"] for r in results} == set(PAPER_TABLE1_MIOU) and len(ours) == len(results):
        paper = PAPER_AVERAGE_MIOU if all(r["paper"]["miou"] is not None for r in results) else None
        text += (
            f"\n| **Average** | | | | {np.mean(ours):.1f} | "
            f"{paper if paper is not None else 'n/a'} | | | Table 1 |"
        )
    return text + "\n"
