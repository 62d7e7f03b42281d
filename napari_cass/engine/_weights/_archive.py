"""A PyTorch checkpoint's zip records, checked against the model before ``torch.load`` inflates them.

``torch.save`` writes a zip archive whose tensor records (``<name>/data/<key>``) are
stored, never compressed; ``torch.load`` allocates each record at the size the zip's
directory declares and inflates it there. A crafted archive can deflate a record:
4 MB on disk, gigabytes in memory before any name or shape is checked. The directory
is read first (sizes only, nothing inflated) and the archive refused when:

- the compressed tensor records would inflate to more than the model's own tensors
  could need (:data:`INFLATE_FACTOR` times their bytes, for float64 copies);
- all tensor records together are out of proportion with the model
  (:data:`STORED_FACTOR` times its bytes: a DINO training checkpoint with student,
  teacher and optimizer state is about 5 times its backbone);
- any other record (the pickle, version, byte order) is larger than
  :data:`MAX_META_BYTES`.

Without a model to compare with, compressed tensor records are allowed only up to
:data:`SLACK` bytes.
"""

from __future__ import annotations

import os
import zipfile
from typing import BinaryIO

import torch
from torch import nn

__all__ = ["INFLATE_FACTOR", "MAX_META_BYTES", "SLACK", "STORED_FACTOR", "check_checkpoint_records",
           "tensor_bytes"]

INFLATE_FACTOR = 2
STORED_FACTOR = 8
MAX_META_BYTES = 64 << 20
SLACK = 64 << 20


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (what a checkpoint of it holds, at its dtypes)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _advice(name: str) -> str:
    return (f"{name} is damaged or crafted; nothing in it was inflated. Download the weights again "
            "(as .safetensors where the model's page offers it), or re-save them where they were "
            "made with torch.save(model.state_dict(), path).")


def check_checkpoint_records(handle: BinaryIO, name: str | os.PathLike[str],
                             expected_bytes: int | None = None) -> None:
    """Refuse a zip checkpoint whose declared record sizes do not fit the model, before inflating.

    Parameters
    ----------
    handle : binary file
        The open checkpoint (the one ``torch.load`` then reads); left at its start.
        Files that are not zip archives (the pre-1.6 format) are not checked here.
    name : path-like
        For messages.
    expected_bytes : int, optional
        Bytes of the model's own tensors (:func:`tensor_bytes`).

    Raises
    ------
    ValueError
        Naming the record, its declared size and what the model allows.
    """
    handle.seek(0)
    try:
        if not zipfile.is_zipfile(handle):
            return
        handle.seek(0)
        with zipfile.ZipFile(handle) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load says what is wrong with it
    finally:
        handle.seek(0)
    stored = inflated = meta = 0
    for info in infos:
        head, _, key = info.filename.rpartition("/data/")
        if head and key and "/" not in key:
            if info.compress_type == zipfile.ZIP_STORED:
                stored += info.file_size
            else:
                inflated += info.file_size
        else:
            meta += info.file_size
            if meta > MAX_META_BYTES:
                raise ValueError(
                    f"{name}: the record {info.filename!r} declares {_mb(info.file_size)} (records "
                    f"other than tensors take at most {_mb(MAX_META_BYTES)} together). {_advice(str(name))}"
                )
    inflate_limit = SLACK if expected_bytes is None else INFLATE_FACTOR * expected_bytes + SLACK
    if inflated > inflate_limit:
        model = ("" if expected_bytes is None
                 else f" (the model's own tensors take {_mb(expected_bytes)})")
        raise ValueError(
            f"{name} holds compressed tensor data that would inflate to {_mb(inflated)}, above the "
            f"{_mb(inflate_limit)} it may take{model}; torch.save never compresses tensors. "
            + _advice(str(name))
        )
    if expected_bytes is not None and stored + inflated > STORED_FACTOR * expected_bytes + SLACK:
        raise ValueError(
            f"{name} holds {_mb(stored + inflated)} of tensor data, more than {STORED_FACTOR} times the "
            f"{_mb(expected_bytes)} the model's own tensors take: it is not a checkpoint of this model. "
            "Give the weights file of the model you chose (napari-cass weights list shows them)."
        )
