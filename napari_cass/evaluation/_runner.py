"""Run a segmenter over a dataset, resumably, and assemble the results.

Per-image counts go to a JSON-lines file in the run folder as soon as each image is
done; the run folder is named after a signature of everything that decides the
numbers (dataset, classes and their words, label mapping, method, preset and its
values, models, switches), so re-running the same command skips finished images,
and changing any setting starts a fresh folder instead of mixing results. Each
cached record also carries the digest of its ground truth and image, and is
recomputed when they changed (see ``_cache``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..io import label_palette, safe_filename, write_indexed_png, write_label_tiff
from ._base import SegDataset
from ._cache import CACHE_FORMAT, PerImageCache, image_digest, stale_reason
from ._metrics import IoUAccumulator
from ._outputs import RunOutputs, check_run_folder
from ._paper import ABLATIONS
from ._prescan import ScanResult, format_bad, scan_dataset
from ._results import EvalRun, finish_run, prediction_path, summarize

__all__ = [
    "RunSpec", "EvalRun", "PerImageCache", "evaluate", "segment_for_dataset", "finish_run", "summarize",
]


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides the numbers of a run (its signature).

    ``classes``, ``label_mapping`` and ``preset_values`` are filled from the dataset
    and the preset registry by :meth:`for_dataset` (which :func:`evaluate` calls), so
    a changed class list, changed words or a changed preset value give a new
    signature and a new run folder.
    """

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
    classes: tuple[tuple[str, ...], ...] = ()
    label_mapping: dict[str, Any] = field(default_factory=dict)
    preset_values: dict[str, Any] = field(default_factory=dict)

    @property
    def options(self) -> dict[str, Any]:
        """Keyword arguments for the Segmenter: the ablation switches plus extras."""
        opts = {ABLATIONS[a]: False for a in self.ablations}
        opts.update(self.extra_options)
        return opts

    def for_dataset(self, dataset: SegDataset) -> RunSpec:
        """This spec with the dataset's classes (name and words), label mapping and preset values."""
        from ..engine import get_preset

        try:
            preset_values = asdict(get_preset(self.preset))
        except (KeyError, ValueError):
            preset_values = {}
        return replace(
            self,
            classes=tuple((c.name, *c.queries) for c in dataset.classes),
            label_mapping={
                "num_classes": dataset.num_classes,
                "has_background": dataset.has_background,
                "reduce_zero_label": bool(dataset.reduce_zero_label),
                "ignore_index": dataset.ignore_index,
            },
            preset_values=preset_values,
        )

    def signature(self) -> dict[str, Any]:
        sig = asdict(self)
        sig["ablations"] = sorted(self.ablations)
        sig["cache_format"] = CACHE_FORMAT
        return json.loads(json.dumps(sig, sort_keys=True, default=str))

    @property
    def signature_hash(self) -> str:
        text = json.dumps(self.signature(), sort_keys=True, default=str)
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]

    @property
    def run_name(self) -> str:
        abl = "-".join(a.replace("no-", "no") for a in sorted(self.ablations))
        parts = [self.dataset, self.method, self.preset] + ([abl] if abl else [])
        if self.extra_options.get("refine") == "pamr":
            parts.append("pamr")
        if self.random_weights:
            parts.append("random")
        return safe_filename("_".join(parts + [self.signature_hash]))


def segment_for_dataset(segmenter: Any, dataset: SegDataset, image: np.ndarray) -> np.ndarray:
    """Segment one image with the dataset's class list; returns ``(H, W)`` labels.

    A background class 0 stays in the class list (a "background" ClassPrompt): the
    engine applies the preset's background rule (``prob_thd``) to it, and accepts the
    benchmark lists' shared words (COCO-Object's background "bed"), which it refuses
    as ``background`` words.
    """
    res = segmenter.segment(image, dataset.classes)
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
    scan: ScanResult | None = None,
    skip_bad: bool = False,
) -> EvalRun:
    """Evaluate the first ``limit`` images (all when None), reusing current cached ones.

    Parameters
    ----------
    dataset : SegDataset
        The images, masks and classes.
    get_segmenter : callable
        Returns the Segmenter; called only if some image still has to be segmented, so
        a fully cached re-run loads no model.
    spec : RunSpec
        The run's settings; completed with the dataset's classes (:meth:`RunSpec.for_dataset`).
    out_dir : Path
        Folder of the run folders.
    limit, resume, progress, save_predictions
        ``--limit``, not ``--no-resume``, not ``--no-progress``; whether to write the
        predicted label maps.
    scan : ScanResult, optional
        A pre-scan of the same ``limit`` (done here when None), run before any model loads.
    skip_bad : bool
        Evaluate without the images whose mask (or image) is bad instead of stopping.

    Raises
    ------
    ValueError
        A bad mask or image without ``skip_bad``, listing every one found.
    """
    from ..cli._console import Progress

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}.")
    spec = spec.for_dataset(dataset)
    if scan is None:
        scan = scan_dataset(dataset, limit)
    if scan.bad and not skip_bad:
        raise ValueError(format_bad([scan]))
    run_dir = Path(out_dir) / spec.run_name
    check_run_folder(out_dir, run_dir)  # no link to follow, before anything is created
    legacy = [prediction_path(run_dir, i, dataset.num_classes).relative_to(run_dir).as_posix()
              for i in _cached_ids(run_dir / "per_image.jsonl")]
    cache = PerImageCache(run_dir, spec.signature(), resume=resume)
    outputs = RunOutputs(run_dir, legacy)
    done = cache.load()
    tidy = cache.num_lines == len(done)  # no superseded or torn line in the file
    acc = IoUAccumulator(dataset.num_classes, ignore_index=dataset.ignore_index)
    records: dict[str, dict[str, Any]] = {}
    todo = []
    recomputed: dict[str, str] = {}
    for s in scan.good:
        rec = done.get(s.image_id)
        reason = None if rec is None else stale_reason(
            rec, scan.gt_digests[s.image_id], s.image_path, dataset.num_classes
        )
        if rec is not None and reason is None:
            acc.add_counts(rec["intersect"], rec["union"], rec["pred"], rec["label"])
            records[s.image_id] = rec
        else:
            if reason is not None:
                recomputed[s.image_id] = reason
            todo.append(s)
    skipped = [b.as_dict() for b in scan.bad]
    position = {s.image_id: i for i, s in enumerate(dataset.samples)}
    segmenter = get_segmenter() if todo else None
    device = str(getattr(segmenter, "device", "n/a")) if segmenter is not None else "n/a"
    seconds: list[float] = []
    palette = label_palette(dataset.num_classes)
    bar = Progress(len(todo), f"eval {dataset.name}", enabled=progress)
    for s in todo:
        bar.start_item(dataset.relative(s.image_path))
        t0 = time.perf_counter()
        img_digest = image_digest(s.image_path, dataset.relative(s.image_path))
        try:
            image_id, image, gt = dataset[position[s.image_id]]
        except ValueError as err:  # a file the header scan could not fault (e.g. truncated)
            if not skip_bad:
                raise ValueError(
                    f"{err}\nFix or remove it, or pass --skip-bad to go on without it "
                    "(the images finished so far are cached)."
                ) from None
            skipped.append({"image_id": s.image_id, "file": dataset.relative(s.image_path),
                            "reason": str(err)})
            bar.advance()
            continue
        pred = segment_for_dataset(segmenter, dataset, image)
        inter, union, pred_area, label_area = acc.update(pred, gt)
        if save_predictions:
            path = outputs.claim(prediction_path(run_dir, image_id, dataset.num_classes))
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
            "gt": scan.gt_digests[image_id],
            "image": img_digest,
            "seconds": elapsed,
            "device": device,
        }
        cache.append(rec)
        records[image_id] = done[image_id] = rec
        bar.advance(note=f"mIoU {100 * acc.miou:.1f}")
    bar.close()
    if recomputed or not tidy:
        cache.rewrite(done)  # one line per image: superseded records leave the file
    ordered = [records[s.image_id] for s in scan.good if s.image_id in records]
    return EvalRun(
        spec=spec,
        run_dir=run_dir,
        accumulator=acc,
        records=ordered,
        num_new=len(seconds),
        num_cached=len(scan.good) - len(todo),
        num_total=len(dataset),
        device=device if seconds else (ordered[-1].get("device", "n/a") if ordered else "n/a"),
        new_seconds=seconds,
        skipped=skipped,
        recomputed=recomputed,
        outputs=outputs,
    )


def _cached_ids(path: Path) -> list[str]:
    """Image ids of a ``per_image.jsonl`` (their predictions are the run's own, recorded or not)."""
    ids: list[str] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return ids
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("id"), str):
            ids.append(rec["id"])
    return ids
