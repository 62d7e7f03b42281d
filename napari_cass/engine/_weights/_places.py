"""Where weights live on this machine: napari-cass's cache folder and the Hugging Face cache.

Nothing here touches the network: these lookups run first, for every model,
before any download is considered.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._models import ModelSpec

__all__ = [
    "cache_dir",
    "cache_folder",
    "cache_target",
    "find_local",
    "hf_cache_label",
    "is_offline",
    "offline_reason",
    "searched_places",
]

_TRUTHY = {"1", "true", "yes", "on"}
_OFFLINE_VARIABLES = ("NAPARI_CASS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def cache_dir() -> Path:
    """napari-cass's weights folder: ``$NAPARI_CASS_CACHE`` or the platform's user cache dir.

    Raises
    ------
    NotADirectoryError
        When the folder's path names an existing regular file.
    """
    env = os.environ.get("NAPARI_CASS_CACHE", "").strip()
    if env:
        path = Path(env).expanduser()
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(
                f"NAPARI_CASS_CACHE is set to {path}, which is a file, not a folder. Point it at a "
                "folder (it is created when needed) or unset it to use the default cache folder."
            )
        return path
    import platformdirs

    path = Path(platformdirs.user_cache_dir("napari-cass"))
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"napari-cass's cache folder {path} is a file; move that file away, or set "
            "NAPARI_CASS_CACHE to another folder."
        )
    return path


def cache_folder(spec: ModelSpec) -> Path:
    """The folder of ``spec``'s kind inside the cache (``clip/`` or ``vfm/``)."""
    folder = cache_dir() / spec.kind
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, but napari-cass keeps its {spec.kind} weights "
                                 "in a folder of that name; move the file away.")
    return folder


def cache_target(spec: ModelSpec) -> Path:
    """Where imported or downloaded weights of ``spec`` are stored (always safetensors)."""
    return cache_folder(spec) / f"{spec.cache_stem}.safetensors"


def offline_reason() -> str | None:
    """Which environment variable switches downloads off (``None`` if none does)."""
    for variable in _OFFLINE_VARIABLES:
        if os.environ.get(variable, "").strip().lower() in _TRUTHY:
            return f"offline mode: {variable}={os.environ[variable].strip()}"
    return None


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether an offline environment variable is set."""
    if offline is not None:
        return bool(offline)
    return offline_reason() is not None


def _find_in_cache(spec: ModelSpec) -> Path | None:
    folder = cache_folder(spec)
    for file_name in spec.expected_files():
        candidate = folder / file_name
        if candidate.is_file():
            return candidate
    return None


def _find_in_hf_cache(spec: ModelSpec) -> Path | None:
    """A file the Hugging Face cache already holds (e.g. from an earlier open_clip/timm run)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        source = spec.hub()
        for file_name in source.filenames:
            found = try_to_load_from_cache(source.repo_id, file_name)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    except Exception:  # a broken HF cache must not stop us from looking elsewhere
        return None
    return None


def find_local(spec: ModelSpec) -> Path | None:
    """``spec``'s weights file in our cache, else in the Hugging Face cache; ``None`` if absent."""
    return _find_in_cache(spec) or _find_in_hf_cache(spec)


def find_in_our_cache(spec: ModelSpec) -> Path | None:
    """``spec``'s weights file in napari-cass's own cache folder only."""
    return _find_in_cache(spec)


def find_in_hf_cache(spec: ModelSpec) -> Path | None:
    """``spec``'s weights file in the Hugging Face cache only."""
    return _find_in_hf_cache(spec)


def hf_cache_label() -> str:
    """``"Hugging Face cache (/path)"`` for messages."""
    try:
        from huggingface_hub import constants

        return f"Hugging Face cache ({constants.HF_HUB_CACHE})"
    except Exception:
        return "Hugging Face cache"


def searched_places(spec: ModelSpec) -> list[str]:
    """The places looked in for ``spec``'s weights, in order, as shown to users."""
    return [str(cache_folder(spec)), hf_cache_label()]
