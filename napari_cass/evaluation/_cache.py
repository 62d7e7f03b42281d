"""The per-image result cache of a run folder: ``per_image.jsonl`` and ``signature.json``.

A record is reused only when it was computed from the same files: it carries the
digest of its ground truth (content hash) and of its image (size, mtime and content
hash), and is recomputed when either changed. Reading keeps one record per image id
(the last line wins), so a recomputed image is never counted twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..io import atomic_write
from ._prescan import blake2b_bytes
from ._report import write_json

__all__ = ["CACHE_FORMAT", "PerImageCache", "image_digest", "stale_reason"]

# 2: records carry "gt" and "image" digests; the signature covers the classes.
CACHE_FORMAT = 2
_COUNT_KEYS = ("intersect", "union", "pred", "label")


def image_digest(path: Path, name: str) -> dict[str, Any]:
    """Size, mtime and content hash of an image file, stored with its record."""
    st = path.stat()
    return {
        "name": name,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "blake2b": blake2b_bytes(path.read_bytes()),
    }


def stale_reason(
    rec: dict[str, Any], gt_digest: dict[str, Any], image_path: Path, num_classes: int
) -> str | None:
    """Why a cached record cannot be reused (None when it can).

    The ground truth is compared by name and content hash. The image is compared by
    name and size, then by mtime; only when the mtime differs is it hashed again, so a
    resumed run reads every mask but no unchanged image.
    """
    if any(
        not isinstance(rec.get(k), list) or len(rec[k]) != num_classes for k in _COUNT_KEYS
    ):
        return "counts for another number of classes"
    old_gt = rec.get("gt")
    if not isinstance(old_gt, dict) or (old_gt.get("name"), old_gt.get("blake2b")) != (
        gt_digest["name"], gt_digest["blake2b"]
    ):
        return "ground truth changed"
    old_img = rec.get("image")
    try:
        st = image_path.stat()
    except OSError:
        return "image missing"
    if not isinstance(old_img, dict) or old_img.get("size") != st.st_size:
        return "image changed"
    if old_img.get("mtime_ns") != st.st_mtime_ns:
        if old_img.get("blake2b") != blake2b_bytes(image_path.read_bytes()):
            return "image changed"
    return None


class PerImageCache:
    """Append-only JSON-lines store of per-image counts, safe against a torn last line.

    Parameters
    ----------
    run_dir : Path
        The run folder; created if needed.
    signature : dict
        The run signature; a folder holding another signature is refused.
    resume : bool
        False drops the cached records (``--no-resume``).
    """

    def __init__(self, run_dir: Path, signature: dict[str, Any], resume: bool = True) -> None:
        self.run_dir = run_dir
        self.path = run_dir / "per_image.jsonl"
        self.num_lines = 0
        run_dir.mkdir(parents=True, exist_ok=True)
        sig_path = run_dir / "signature.json"
        if sig_path.exists():
            stored = json.loads(sig_path.read_text(encoding="utf-8"))
            if stored != json.loads(json.dumps(signature, default=str)):
                raise ValueError(
                    f"{run_dir} holds results of a different run (signature.json differs). "
                    "Choose another --out folder or delete that run folder."
                )
        else:
            write_json(sig_path, json.loads(json.dumps(signature, default=str)))
        if not resume and self.path.exists():
            self.path.unlink()

    def load(self) -> dict[str, dict[str, Any]]:
        """Records by image id, the last line of an id winning; a torn line is dropped."""
        records: dict[str, dict[str, Any]] = {}
        self.num_lines = 0
        if not self.path.exists():
            return records
        for line in self.path.read_text(encoding="utf-8").splitlines():
            self.num_lines += 1
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("id"), str):
                records[rec["id"]] = rec
        return records

    def append(self, record: dict[str, Any]) -> None:
        """Add one record at once (an interrupted run loses at most the image in progress)."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(self.path, flags, 0o666), "a", encoding="utf-8") as fh:  # never through a link
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def rewrite(self, records: dict[str, dict[str, Any]]) -> None:
        """Replace the file by one line per id (drops superseded and torn lines), atomically."""
        text = "".join(json.dumps(rec) + "\n" for rec in records.values())
        with atomic_write(self.path, overwrite=True) as tmp:
            tmp.write_text(text, encoding="utf-8")
        self.num_lines = len(records)
