"""Run a segmenter over a dataset, resumably, and assemble the results.

Per-image counts go to a JSON-lines file in the run folder as soon as each image is
done; the run folder is named after a signature of everything that decides the
numbers, so re-running the same command skips finished images, and changing any
setting starts a fresh folder instead of mixing results.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..io import label_palette, read_label_image, safe_filename, write_indexed_png, write_label_tiff
from ._datasets import SegDataset
from ._metrics import IoUAccumulator, iou_from_counts
from ._paper import ABLATIONS, paper_miou, table3_row
from ._report import draw_iou_chart, draw_side_by_side, format_markdown, write_json, write_text

__all__ = [
    "RunSpec", "EvalRun", "PerImageCache", "evaluate", "segment_for_dataset", "finish_run", "summarize",
]

CACHE_FORMAT = 1


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides the numbers of a run (its signature)."""

    dataset: str
    root: str
    split: str
    preset: str
    method: str
    clip: str
    vfm: str
    random_weights: bool = False
    ablations: tuple[str, ...] = ()
    extra_options: dict[str, Any] = field(default_factory=dict)
    engine_version: str = ""

    @property
    def options(self) -> dict[str, Any]:
        """Keyword arguments for the Segmenter: the ablation switches plus extras."""
        opts = {ABLATIONS[a]: False for a in self.ablations}
        opts.update(self.extra_options)
        return opts

    def signature(self) -> dict[str, Any]:
        sig = asdict(self)
        sig["ablations"] = sorted(self.ablations)
        sig["cache_format"] = CACHE_FORMAT
        return sig

    @property
    def signature_hash(self) -> str:
        text = json.dumps(self.signature(), sort_keys=True, default=str)
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]

    @property
    def run_name(self) -> str:
        abl = "-".join(a.replace("no-", "no") for a in sorted(self.ablations))
        parts = [self.dataset, self.method, self.preset] + ([abl] if abl else [])
        if self.random_weights:
            parts.append("random")
        return safe_filename("_".join(parts + [self.signature_hash]))


class PerImageCache:
    """Append-only JSON-lines store of per-image counts, safe against a torn last line."""

    def __init__(self, run_dir: Path, spec: RunSpec, resume: bool = True) -> None:
        self.run_dir = run_dir
        self.path = run_dir / "per_image.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        sig_path = run_dir / "signature.json"
        signature = spec.signature()
        if sig_path.exists():
            stored = json.loads(sig_path.read_text(encoding="utf-8"))
            if stored != json.loads(json.dumps(signature, default=str)):
                raise ValueError(
                    f"{run_dir} holds results of a different run (signature.json differs). "
                    "Choose another --out folder or delete that run folder."
                )
        else:
            write_json(sig_path, signature)
        if not resume and self.path.exists():
            self.path.unlink()

    def load(self) -> dict[str, dict[str, Any]]:
        """Records by image id; a line cut short by an interruption is dropped."""
        records: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return records
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "id" in rec:
                records[rec["id"]] = rec
        return records

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()


def segment_for_dataset(segmenter: Any, dataset: SegDataset, image: np.ndarray) -> np.ndarray:
    """Segment one image with the dataset's class list; returns ``(H, W)`` labels.

    A background class 0 goes through the engine's ``background`` argument so the
    preset's background rule (``prob_thd``) applies to it.
    """
    classes = dataset.classes
    if dataset.has_background:
        res = segmenter.segment(image, classes[1:], background=list(classes[0].queries))
    else:
        res = segmenter.segment(image, classes)
    labels = np.asarray(res.labels)
    if labels.shape != image.shape[:2]:
        raise RuntimeError(
            f"The segmenter returned labels of shape {labels.shape} for an image of "
            f"shape {image.shape[:2]}."
        )
    if len(res.classes) != dataset.num_classes:
        raise RuntimeError(
            f"The segmenter returned {len(res.classes)} classes, the dataset has "
            f"{dataset.num_classes}."
        )
    return labels


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


def _prediction_path(run_dir: Path, image_id: str, num_classes: int) -> Path:
    stem = safe_filename(image_id)
    if stem != image_id:  # keep distinct ids distinct after sanitising
        stem += "_" + hashlib.sha1(image_id.encode("utf-8")).hexdigest()[:6]
    return run_dir / "predictions" / (stem + (".png" if num_classes <= 256 else ".tif"))


def evaluate(
    dataset: SegDataset,
    get_segmenter: Callable[[], Any],
    spec: RunSpec,
    out_dir: Path,
    *,
    limit: int | None = None,
    resume: bool = True,
    progress: bool = True,
    save_predictions: bool = True,
) -> EvalRun:
    """Evaluate the first ``limit`` images (all when None), skipping cached ones.

    ``get_segmenter`` is called only if some image still has to be segmented, so a
    fully cached re-run loads no model.
    """
    from tqdm.auto import tqdm

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}.")
    run_dir = Path(out_dir) / spec.run_name
    cache = PerImageCache(run_dir, spec, resume=resume)
    done = cache.load()
    samples = dataset.samples[: limit or None]
    acc = IoUAccumulator(dataset.num_classes)
    palette = label_palette(dataset.num_classes)
    todo = [i for i, s in enumerate(samples) if s.image_id not in done]
    records: dict[str, dict[str, Any]] = {}
    for s in samples:
        if s.image_id in done:
            rec = done[s.image_id]
            acc.add_counts(rec["intersect"], rec["union"], rec["pred"], rec["label"])
            records[s.image_id] = rec
    segmenter = get_segmenter() if todo else None
    device = str(getattr(segmenter, "device", "n/a")) if segmenter is not None else "n/a"
    seconds: list[float] = []
    bar = tqdm(todo, desc=f"eval {dataset.name}", unit="img", disable=not progress)
    for index in bar:
        t0 = time.perf_counter()
        image_id, image, gt = dataset[index]
        pred = segment_for_dataset(segmenter, dataset, image)
        inter, union, pred_area, label_area = acc.update(pred, gt)
        if save_predictions:
            path = _prediction_path(run_dir, image_id, dataset.num_classes)
            path.parent.mkdir(parents=True, exist_ok=True)
            if dataset.num_classes <= 256:
                write_indexed_png(path, pred.astype(np.int64), palette, overwrite=True)
            else:
                write_label_tiff(path, pred.astype(np.int64), overwrite=True)
        elapsed = time.perf_counter() - t0
        seconds.append(elapsed)
        rec = {
            "id": image_id,
            "intersect": inter.tolist(),
            "union": union.tolist(),
            "pred": pred_area.tolist(),
            "label": label_area.tolist(),
            "seconds": elapsed,
            "device": device,
        }
        cache.append(rec)
        records[image_id] = rec
        bar.set_postfix(mIoU=f"{100 * acc.miou:.1f}")
    bar.close()
    ordered = [records[s.image_id] for s in samples]
    return EvalRun(
        spec=spec,
        run_dir=run_dir,
        accumulator=acc,
        records=ordered,
        num_new=len(todo),
        num_cached=len(samples) - len(todo),
        num_total=len(dataset),
        device=device if todo else (ordered[-1].get("device", "n/a") if ordered else "n/a"),
        new_seconds=seconds,
    )


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
    if worst_dir.is_dir():  # regenerated on every run: drop our own old drawings
        for old in worst_dir.glob("[0-9][0-9][0-9]_*.png"):
            old.unlink()
    if n <= 0:
        return []
    scored = [(m, r["id"]) for r in run.records if not math.isnan(m := _per_image_miou(r))]
    scored.sort(key=lambda t: t[0])
    out: list[dict[str, Any]] = []
    for rank, (score, image_id) in enumerate(scored[:n], start=1):
        pred_path = _prediction_path(run.run_dir, image_id, dataset.num_classes)
        if not pred_path.is_file():
            continue
        _, image, gt = dataset[dataset.index_of(image_id)]
        pred = read_label_image(pred_path)
        path = worst_dir / f"{rank:03d}_{pred_path.stem}.png"
        draw_side_by_side(
            path, image, pred, gt, dataset.num_classes,
            has_background=dataset.has_background,
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
