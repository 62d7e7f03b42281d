"""From a model name and a ``weights`` argument to a model with those weights loaded.

Resolution order for pretrained weights, for every model a run needs, before
any network access: napari-cass's cache folder, then the Hugging Face cache.
Only then, for what is still missing: nothing more when offline; otherwise one
quick probe of the Hub and, if it answers, a download (stored in our cache as
safetensors). Whatever cannot be found is reported in one
:class:`WeightsNotFoundError` naming every missing model.
"""

from __future__ import annotations

import os
import shutil
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import _hub
from ._archive import tensor_bytes
from ._files import check_finite, load_state_dict_file, not_a_file_message
from ._messages import WeightsNotFoundError, missing_weights_message
from ._models import (CLIP_MODELS, VFM_MODELS, WEIGHT_SUFFIXES, ModelSpec, ProgressCallback,
                      find_model)
from ._places import (cache_target, find_in_hf_cache, find_in_our_cache, find_local, is_offline,
                      offline_reason, searched_places)

__all__ = ["build_clip", "build_vfm", "download_weights", "ensure_weights", "import_weights",
           "weights_status"]

_PRETRAINED_WORDS = {"pretrained", "openai", "dino", "default"}
_RANDOM_WORDS = {"random", "none"}
# Keys OpenAI's CLIP releases carry besides the weights.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")

WeightsRequest = tuple[str, str, "str | os.PathLike[str]"]  # (kind, model name, weights)


def _key_list(keys: list[str]) -> str:
    return f"{', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"


def _normalize(state: dict[str, torch.Tensor], model: nn.Module, spec_name: str,
               source: Path) -> dict[str, torch.Tensor]:
    """Map a checkpoint's keys onto ``model`` and check every tensor's shape."""
    expected = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new_key = key
        for prefix in ("module.", "backbone."):
            if new_key.startswith(prefix) and new_key not in expected:
                new_key = new_key[len(prefix):]
        out[new_key] = value
    for key in _OPENAI_EXTRA_KEYS:
        if key not in expected:
            out.pop(key, None)
    # Buffers the model computes itself (non-persistent, e.g. open_clip's attn_mask) are
    # not weights; TorchScript archives list them with the persistent ones.
    for key in {name for name, _ in model.named_buffers()} - set(expected):
        out.pop(key, None)
    if not any(k.startswith("head.") for k in expected):
        # DINO checkpoints carry the self-distillation projection head used only in
        # training; our backbone is built without a head (num_classes=0).
        out = {k: v for k, v in out.items() if not k.startswith("head.")}
    for key in ("logit_scale", "logit_bias"):
        if key in out and key in expected and out[key].shape != expected[key].shape \
                and out[key].numel() == expected[key].numel():
            out[key] = out[key].reshape(expected[key].shape)
    missing = [k for k in expected if k not in out]
    unexpected = [k for k in out if k not in expected]
    if missing or unexpected:
        parts = ([f"missing keys {_key_list(missing)}"] if missing else []) + \
                ([f"unexpected keys {_key_list(unexpected)}"] if unexpected else [])
        raise ValueError(f"{source} does not match model {spec_name}: {'; '.join(parts)}. "
                         "Is it a checkpoint of another model?")
    for key, ref in expected.items():
        if tuple(out[key].shape) != tuple(ref.shape):
            raise ValueError(
                f"{source}: tensor {key!r} has shape {tuple(out[key].shape)} but model {spec_name} "
                f"expects {tuple(ref.shape)}; the file belongs to a different model."
            )
        if out[key].dtype != ref.dtype:
            out[key] = out[key].to(ref.dtype)
    check_finite(source, out)
    return out


def _load_checked(path: Path, spec: ModelSpec, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    model = model or spec.factory()  # first: its size bounds what the file may inflate to
    state = load_state_dict_file(path, model=spec.name, finite=False,  # finite: checked once mapped
                                 expected_bytes=tensor_bytes(model))
    return _normalize(state, model, spec.name, path)


def _save_safetensors(state: dict[str, torch.Tensor], target: Path, spec: ModelSpec,
                      origin: str, overwrite: bool) -> Path:
    from safetensors.torch import save_file

    from ...io import atomic_write

    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    with atomic_write(target, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={"napari_cass_model": spec.name, "source": origin})
    return target


def _download_into_cache(spec: ModelSpec, progress: ProgressCallback | None) -> Path:
    """Download, check and store ``spec``'s weights in our cache; the old file is replaced last."""
    downloaded, tmp_dir = _hub.download_to_temp(spec, progress)
    try:
        state = _load_checked(downloaded, spec)
        return _save_safetensors(state, cache_target(spec), spec,
                                 f"{spec.hub().repo_id}/{downloaded.name}", overwrite=True)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _fetch_missing(missing: list[ModelSpec], offline: bool | None,
                   progress: ProgressCallback | None) -> dict[str, Path]:
    """Download every model of ``missing``, or raise one error naming all that could not be had."""
    if is_offline(offline):
        why = offline_reason() if offline is None else "offline=True"
        raise WeightsNotFoundError(missing_weights_message(missing, f"{why}, so nothing was downloaded"),
                                   [s.name for s in missing])
    unreachable = _hub.probe_hub()
    if unreachable is not None:
        raise WeightsNotFoundError(
            missing_weights_message(missing, f"{unreachable}, so nothing was downloaded"),
            [s.name for s in missing])
    found: dict[str, Path] = {}
    failures: dict[str, str] = {}
    for spec in missing:
        try:
            found[spec.name] = _download_into_cache(spec, progress)
        except (OSError, ValueError) as exc:
            failures[spec.name] = str(exc)
    if failures:
        failed = [s for s in missing if s.name in failures]
        raise WeightsNotFoundError(missing_weights_message(failed, "the download failed", failures),
                                   list(failures))
    return found


def _choice(weights: str | os.PathLike[str]) -> str | Path:
    """``"pretrained"``, ``"random"`` or a path, from the user's ``weights`` argument."""
    if isinstance(weights, os.PathLike):
        return Path(weights).expanduser()
    word = str(weights).strip()
    if word.lower() in _PRETRAINED_WORDS:
        return "pretrained"
    if word.lower() in _RANDOM_WORDS:
        return "random"
    path = Path(word).expanduser()
    if path.suffix.lower() in WEIGHT_SUFFIXES or path.exists() or os.sep in word or "/" in word:
        return path
    raise ValueError(
        f"weights must be 'pretrained' (or 'openai' for CLIP), 'random', or a path to a weights "
        f"file; got {weights!r}."
    )


def _check_path(path: Path, spec: ModelSpec) -> None:
    if not path.is_file():
        error = IsADirectoryError if path.is_dir() else FileNotFoundError
        raise error(f"{spec.name}: {not_a_file_message(path)}")


def ensure_weights(requests: Sequence[WeightsRequest], *, offline: bool | None = None,
                   progress: ProgressCallback | None = None) -> dict[str, Path]:
    """Make sure every requested model's weights are on disk, looking locally first.

    Parameters
    ----------
    requests : sequence of (kind, name, weights)
        ``kind`` is ``"clip"`` or ``"vfm"``; ``weights`` as for :func:`build_clip`.
        Random weights need nothing; explicit paths are checked to be files.
    offline : bool, optional
        Never download (default: the ``HF_HUB_OFFLINE`` / ``NAPARI_CASS_OFFLINE``
        environment variables).
    progress : callable, optional
        ``progress(done, total, message)`` during downloads.

    Returns
    -------
    dict of str to Path
        The weights file of every pretrained model, by model name.

    Raises
    ------
    WeightsNotFoundError
        One error naming every model whose weights are neither local nor downloadable.
    """
    specs: list[ModelSpec] = []
    for kind, name, weights in requests:
        spec = find_model(name, kind)
        choice = _choice(weights)
        if isinstance(choice, Path):
            _check_path(choice, spec)
        elif choice == "pretrained" and spec not in specs:
            specs.append(spec)
    found = {spec.name: find_local(spec) for spec in specs}
    missing = [spec for spec in specs if found[spec.name] is None]
    if missing:
        found.update(_fetch_missing(missing, offline, progress))
    return {name: path for name, path in found.items() if path is not None}


def _build(spec: ModelSpec, weights: str | os.PathLike[str], progress: ProgressCallback | None,
           offline: bool | None) -> nn.Module:
    choice = _choice(weights)
    source: Path | None = None
    if choice == "pretrained":  # fail fast, before building the model
        source = ensure_weights([(spec.kind, spec.name, "pretrained")], offline=offline,
                                progress=progress)[spec.name]
    elif isinstance(choice, Path):
        _check_path(choice, spec)
        source = choice
    if source is None:
        # Random weights seeded from the model's name: every process (CLI, server replicas,
        # Ray workers) builds the same model, so their outputs can be compared and resumed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(spec.name.encode("utf-8")))
            model = spec.factory()
    else:
        model = spec.factory()
    if source is None:
        warnings.warn(
            f"{spec.name} has random weights: segmentations are meaningless (for tests and demos only).",
            UserWarning,
            stacklevel=3,
        )
    else:
        model.load_state_dict(_load_checked(source, spec, model), strict=True)
    return model.eval()


def build_clip(name: str = "ViT-B-16", weights: str | os.PathLike[str] = "openai", *,
               progress: ProgressCallback | None = None,
               offline: bool | None = None) -> tuple[nn.Module, Callable[..., torch.Tensor]]:
    """Build a CLIP model (eval mode) and its tokenizer.

    Parameters
    ----------
    name : str
        ``"ViT-B-16"``, ``"ViT-B-32"`` or ``"ViT-L-14"``.
    weights : str or path
        ``"openai"`` (local caches, else a download), ``"random"`` (full-size random
        weights, warns) or a path to a weights file.
    """
    import open_clip

    spec = find_model(name, "clip")
    model = _build(spec, weights, progress, offline)
    return model, open_clip.get_tokenizer(spec.tokenizer or spec.arch)


def build_vfm(name: str = "dino_vitb8", weights: str | os.PathLike[str] = "pretrained", *,
              progress: ProgressCallback | None = None, offline: bool | None = None) -> nn.Module:
    """Build the vision foundation model (DINO ViT via timm, no head, eval mode)."""
    spec = find_model(name, "vfm")
    return _build(spec, weights, progress, offline)


def weights_status() -> list[dict[str, Any]]:
    """One row per known model: whether its weights are available locally, and where."""
    rows = []
    for spec in [*CLIP_MODELS.values(), *VFM_MODELS.values()]:
        path = find_local(spec)
        try:
            hub = spec.hub().repo_id
        except Exception:
            hub = ""
        rows.append({
            "model": spec.name, "kind": spec.kind, "present": path is not None,
            "path": str(path) if path is not None else None, "searched": searched_places(spec),
            "hub": hub, "expected": spec.expected_files(),
        })
    return rows


def import_weights(path: str | os.PathLike[str], model: str, *, overwrite: bool = False) -> Path:
    """Check a weights file against ``model`` and store it in the cache as safetensors.

    This is how offline machines get weights: download the file elsewhere, copy it
    over and import it. Every tensor's name, shape and finiteness is checked first;
    nothing in the file is executed.
    """
    spec = find_model(model)
    source = Path(path).expanduser()
    _check_path(source, spec)
    target = cache_target(spec)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already holds weights for {spec.name}; add --overwrite to "
                              f"replace them (napari-cass weights import PATH --model {spec.name} --overwrite).")
    state = _load_checked(source, spec)
    return _save_safetensors(state, target, spec, source.name, overwrite=overwrite)


def download_weights(model: str, *, progress: ProgressCallback | None = None,
                     overwrite: bool = False) -> Path:
    """Make sure ``model``'s weights are in our cache (downloading them if needed); return the file."""
    spec = find_model(model)
    existing = find_in_our_cache(spec)
    if existing is not None and not overwrite:
        return existing
    hf_local = None if overwrite else find_in_hf_cache(spec)
    if hf_local is not None:  # already in the Hugging Face cache: just convert it into ours
        state = _load_checked(hf_local, spec)
        return _save_safetensors(state, cache_target(spec), spec, hf_local.name, overwrite=True)
    return _fetch_missing([spec], None, progress)[spec.name]
