"""Reading one weights file into a state dict, without ever executing the file's code.

Every file is read as safetensors or with ``torch.load(weights_only=True)``;
TorchScript archives only when they are one of OpenAI's CLIP releases (see
:mod:`._torchscript`). Each file is opened once: a checkpoint's zip records are
checked against the model (:mod:`._archive`) on the handle ``torch.load`` then reads,
and a TorchScript archive is hashed and parsed from one in-memory copy, so a file
swapped in between is never what gets read. The tensors are checked before anyone
uses them: a mapping of names to tensors, all finite.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ._archive import check_checkpoint_records
from ._models import WEIGHT_SUFFIXES
from ._torchscript import (MAX_TORCHSCRIPT_BYTES, OPENAI_CLIP_SHA256, is_torchscript_archive,
                           read_torchscript_weights, refusal_message)

__all__ = ["check_finite", "load_state_dict_file", "not_a_file_message"]

_CONTAINER_KEYS = ("teacher", "state_dict", "model", "module")


def not_a_file_message(path: Path) -> str:
    """What to say when ``path`` is a folder or does not exist."""
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix.lower() in WEIGHT_SUFFIXES)[:5]
        hint = f" It holds: {', '.join(inside)}." if inside else " It holds no weights file."
        return (f"{path} is a folder, not a weights file; give the weights file inside it "
                f"(a .safetensors, .bin, .pt or .pth file).{hint}")
    return f"Weights file {path} does not exist; give a .safetensors, .bin, .pt or .pth file."


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise ValueError(f"{path} is not a readable safetensors file ({exc}).") from exc


def _read_once(path: Path, limit: int) -> bytes:
    """The file's bytes from one open, refusing files above ``limit`` bytes without reading them."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise ValueError(
            f"{path} is a TorchScript archive of {max(size, len(data)) / 1e6:,.0f} MB, larger than "
            f"any of OpenAI's CLIP releases ({limit / 1e6:,.0f} MB at most); napari-cass reads "
            "TorchScript only for those. Download the weights as .safetensors from the model's "
            "Hugging Face page."
        )
    return data


def _read_torchscript(path: Path, model: str | None) -> dict[str, torch.Tensor]:
    # Hash and parse the same bytes: a file renamed over this one in between is never read.
    data = _read_once(path, MAX_TORCHSCRIPT_BYTES)
    sha256 = hashlib.sha256(data).hexdigest()
    release = OPENAI_CLIP_SHA256.get(sha256)
    if release is None:
        raise ValueError(refusal_message(path, sha256))
    if model is not None and release != model:
        raise ValueError(f"{path} is OpenAI's {release} release, not {model}; "
                         f"use it with --model {release}.")
    return read_torchscript_weights(io.BytesIO(data), name=str(path))


def _read_weights_only(path: Path, expected_bytes: int | None) -> Any:
    with open(path, "rb") as handle:  # one open: the records checked are the records loaded
        check_checkpoint_records(handle, path, expected_bytes)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return torch.load(handle, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise _not_weights_only(path, exc) from exc


def _not_weights_only(path: Path, exc: Exception) -> ValueError:
    """What to say when ``torch.load(weights_only=True)`` refuses a file."""
    why = (str(exc) or type(exc).__name__).splitlines()[0]
    return ValueError(
        f"{path} could not be read as a weights-only PyTorch checkpoint ({why}). "
        "napari-cass never unpickles arbitrary objects (they can run code). Save just the "
        "weights where the file was made, with torch.save(model.state_dict(), path) or "
        "safetensors.torch.save_file(model.state_dict(), path), and use that file."
    )


def _unwrap(data: Any) -> Any:
    """``{"teacher": {...}}`` (DINO), ``{"state_dict": ...}``, ``{"model": ...}`` -> the weights."""
    for _ in range(4):
        if not isinstance(data, Mapping):
            break
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            break
        for key in _CONTAINER_KEYS:
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
        else:
            break
    return data


def check_finite(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Refuse NaN or infinite values, naming the file and the first bad tensor."""
    for key, value in state.items():
        if not (value.is_floating_point() or value.is_complex()) or value.numel() == 0:
            continue
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            raise ValueError(
                f"{path}: tensor {key!r} holds {bad} NaN or infinite value(s) out of {value.numel()}; "
                "the file is damaged or comes from a diverged training run. Download it again."
            )


def load_state_dict_file(path: str | os.PathLike[str], *, model: str | None = None,
                         finite: bool = True, expected_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """Read a weights file without executing any of its code; unwrap checkpoint containers.

    Parameters
    ----------
    path : path-like
        A ``.safetensors`` file; a PyTorch checkpoint (read with ``weights_only=True``),
        possibly nesting the weights under ``teacher`` / ``state_dict`` / ``model`` /
        ``module``; or one of OpenAI's TorchScript CLIP releases (recognised by SHA-256
        and read as data).
    model : str, optional
        The model the file is meant for; an OpenAI release of another model is refused.
    finite : bool
        Refuse NaN / infinite values (callers that first drop entries the model does
        not use, such as a causal ``attn_mask`` of -inf, check afterwards).
    expected_bytes : int, optional
        Bytes of the model's own tensors: a checkpoint's zip records are checked against
        it before anything is inflated (see :mod:`._archive`).

    Returns
    -------
    dict of str to Tensor

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    IsADirectoryError
        The path is a folder.
    ValueError
        Unreadable, not weights, non-finite values, or code that would have to run.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise IsADirectoryError(not_a_file_message(p))
    if not p.is_file():
        raise FileNotFoundError(not_a_file_message(p))
    if p.suffix.lower() == ".safetensors":
        data: Any = _read_safetensors(p)
    elif is_torchscript_archive(p):
        data = _read_torchscript(p, model)
    else:
        data = _unwrap(_read_weights_only(p, expected_bytes))
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{p} holds no weights (expected a mapping of parameter names to tensors).")
    bad = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(
            f"{p} mixes non-tensor entries ({', '.join(map(str, bad[:5]))}) with weights; "
            "save only the model's state_dict."
        )
    state = {str(k): v for k, v in data.items()}
    if finite:
        check_finite(p, state)
    return state
