"""Model weights: where they are looked for, how they are fetched, and how they are loaded safely.

Resolution order for pretrained weights: an explicit local file, then napari-cass's
own cache folder (``$NAPARI_CASS_CACHE`` or the platform cache dir), then the
Hugging Face cache, then a Hub download (copied into our cache as safetensors).
Offline, a miss raises :class:`WeightsNotFoundError` saying exactly which file to
put where. Files are never unpickled: safetensors, or ``torch.load(weights_only=True)``,
or TorchScript archives (OpenAI CLIP) read with ``torch.jit.load``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CLIP_MODELS",
    "VFM_MODELS",
    "HubSource",
    "ModelSpec",
    "ProgressCallback",
    "WeightsNotFoundError",
    "build_clip",
    "build_vfm",
    "cache_dir",
    "download_weights",
    "find_model",
    "import_weights",
    "load_state_dict_file",
    "weights_status",
]

ProgressCallback = Callable[[int, int, str], None]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_PRETRAINED_WORDS = {"pretrained", "openai", "dino", "default"}
_RANDOM_WORDS = {"random", "none"}
# Keys OpenAI's TorchScript CLIP archives carry besides the weights.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are neither on disk nor downloadable (offline or network error)."""


@dataclass(frozen=True)
class HubSource:
    """Where a model's weights can be downloaded from."""

    repo_id: str
    filenames: tuple[str, ...]
    url: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """One model napari-cass can build: its architecture, cache file name and download source."""

    name: str
    kind: str  # "clip" | "vfm"
    arch: str  # open_clip model name or timm model name
    cache_stem: str
    factory: Callable[[], nn.Module] = field(repr=False, compare=False)
    tag: str = ""
    tokenizer: str | None = None  # open_clip tokenizer name (CLIP only)
    source: HubSource | None = None  # None: ask open_clip / timm's pretrained configs

    def hub(self) -> HubSource:
        """The download source, read from open_clip's or timm's own pretrained config."""
        if self.source is not None:
            return self.source
        if self.kind == "clip":
            return _open_clip_source(self.arch, self.tag)
        return _timm_source(self.arch)

    def expected_files(self) -> list[str]:
        """File names accepted in the cache folder, preferred first."""
        return [f"{self.cache_stem}{suffix}" for suffix in WEIGHT_SUFFIXES]


def _open_clip_source(arch: str, tag: str) -> HubSource:
    import open_clip
    from open_clip import pretrained as oc_pretrained

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    # open_clip writes "org/repo/" (default file names) or "org/repo/file.bin".
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub.endswith("/"):
        repo_id, filename = hf_hub.rstrip("/"), ""
    else:
        repo_id, filename = os.path.split(hf_hub)
    if filename:
        safe = [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []
        files = (*safe, filename)
    else:
        files = (oc_pretrained.HF_SAFE_WEIGHTS_NAME, oc_pretrained.HF_WEIGHTS_NAME)
    return HubSource(repo_id=repo_id, filenames=tuple(files), url=cfg.get("url", ""))


def _timm_source(arch: str) -> HubSource:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    repo_id = getattr(cfg, "hf_hub_id", None) or f"timm/{arch}"
    files = ("model.safetensors", "pytorch_model.bin")
    return HubSource(repo_id=repo_id, filenames=files, url=getattr(cfg, "url", "") or "")


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """Silence open_clip's "no pretrained weights loaded" warning: we load them ourselves."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _open_clip_factory(arch: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import open_clip

        with _quiet_logging():
            return open_clip.create_model(arch, pretrained=None, force_quick_gelu=True)

    return build


def _timm_factory(arch: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm

        return timm.create_model(arch, pretrained=False, num_classes=0)

    return build


def _clip_spec(name: str) -> ModelSpec:
    return ModelSpec(name=name, kind="clip", arch=name, tag="openai", tokenizer=name,
                     cache_stem=f"{name}_openai", factory=_open_clip_factory(name))


def _vfm_spec(name: str, arch: str) -> ModelSpec:
    return ModelSpec(name=name, kind="vfm", arch=arch, tag="dino", cache_stem=arch,
                     factory=_timm_factory(arch))


CLIP_MODELS: dict[str, ModelSpec] = {n: _clip_spec(n) for n in ("ViT-B-16", "ViT-B-32", "ViT-L-14")}
VFM_MODELS: dict[str, ModelSpec] = {
    "dino_vitb8": _vfm_spec("dino_vitb8", "vit_base_patch8_224.dino"),
    "dino_vits8": _vfm_spec("dino_vits8", "vit_small_patch8_224.dino"),
    "dino_vitb16": _vfm_spec("dino_vitb16", "vit_base_patch16_224.dino"),
}


def cache_dir() -> Path:
    """napari-cass's weights folder: ``$NAPARI_CASS_CACHE`` or the platform's user cache dir."""
    env = os.environ.get("NAPARI_CASS_CACHE", "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-cass"))


def _is_offline(offline: bool | None) -> bool:
    if offline is not None:
        return bool(offline)
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(v, "").strip().lower() in truthy
               for v in ("HF_HUB_OFFLINE", "NAPARI_CASS_OFFLINE"))


def find_model(name: str, kind: str | None = None) -> ModelSpec:
    """Look a model up by its napari-cass name (or its open_clip / timm name)."""
    registries: list[dict[str, ModelSpec]] = []
    if kind in (None, "clip"):
        registries.append(CLIP_MODELS)
    if kind in (None, "vfm"):
        registries.append(VFM_MODELS)
    if not registries:
        raise ValueError(f"kind must be 'clip' or 'vfm', got {kind!r}.")
    wanted = str(name).strip()
    for registry in registries:
        if wanted in registry:
            return registry[wanted]
    for registry in registries:
        for spec in registry.values():
            if wanted.lower() in (spec.name.lower(), spec.arch.lower()):
                return spec
    known = [n for registry in registries for n in registry]
    what = {"clip": "CLIP model", "vfm": "vision foundation model"}.get(kind or "", "model")
    raise ValueError(f"Unknown {what} {name!r}; choose one of: {', '.join(known)}.")


def _cache_folder(spec: ModelSpec) -> Path:
    return cache_dir() / spec.kind


def _find_in_cache(spec: ModelSpec) -> Path | None:
    folder = _cache_folder(spec)
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


def _hf_cache_label() -> str:
    try:
        from huggingface_hub import constants

        return f"Hugging Face cache ({constants.HF_HUB_CACHE})"
    except Exception:
        return "Hugging Face cache"


def _searched(spec: ModelSpec) -> list[str]:
    return [str(_cache_folder(spec)), _hf_cache_label()]


def _not_found_message(spec: ModelSpec, reason: str) -> str:
    try:
        source = spec.hub()
        hub = f"https://huggingface.co/{source.repo_id} (file {' or '.join(source.filenames)})"
        if source.url:
            hub += f", or the original release {source.url}"
    except Exception:
        hub = "the model's Hugging Face Hub page"
    folder = _cache_folder(spec)
    return (
        f"Weights for {spec.name} ({spec.kind.upper()}) were not found ({reason}). "
        f"Expected one of {', '.join(spec.expected_files())} in {folder}; "
        f"searched: {'; '.join(_searched(spec))}. "
        f"Download them from {hub}, then import the file with: "
        f"napari-cass weights import PATH --model {spec.name}"
    )


class _CallbackBar:
    """A tqdm class that forwards byte counts to ``progress(done, total, message)``."""

    @staticmethod
    def make(progress: ProgressCallback, message: str) -> type:
        from huggingface_hub.utils import tqdm as hf_tqdm

        class Bar(hf_tqdm):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self._cb_total = int(kwargs.get("total") or 0)
                self._cb_done = int(kwargs.get("initial") or 0)
                super().__init__(*args, **kwargs)

            def update(self, n: float | None = 1) -> bool | None:
                self._cb_done += int(n or 0)
                try:
                    progress(self._cb_done, self._cb_total, message)
                except Exception:  # a UI callback must never break a download
                    pass
                return super().update(n)

        return Bar


def _download(spec: ModelSpec, progress: ProgressCallback | None) -> tuple[Path, Path]:
    """Download the weights into a temporary folder inside our cache; return (file, folder)."""
    from huggingface_hub import hf_hub_download

    source = spec.hub()
    folder = _cache_folder(spec)
    folder.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    errors: list[str] = []
    try:
        for file_name in source.filenames:
            kwargs: dict[str, Any] = {}
            if progress is not None:
                kwargs["tqdm_class"] = _CallbackBar.make(progress, f"Downloading {spec.name} ({file_name})")
            try:
                path = hf_hub_download(source.repo_id, file_name, local_dir=tmp_dir, **kwargs)
                return Path(path), tmp_dir
            except Exception as exc:  # missing file variant, network error, ...
                errors.append(f"{file_name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise WeightsNotFoundError(_not_found_message(spec, "download failed: " + "; ".join(errors)))


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a weights file without executing pickled code; unwrap common checkpoint containers.

    Accepts safetensors, plain PyTorch checkpoints (loaded with ``weights_only=True``),
    checkpoints nesting the weights under ``state_dict``/``model``/``teacher``, and
    OpenAI's TorchScript CLIP archives.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"Weights file {p} does not exist; give a .safetensors, .bin, .pt or .pth file."
        )
    if p.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            data: Any = load_file(str(p), device="cpu")
        except Exception as exc:
            raise ValueError(f"{p} is not a readable safetensors file ({exc}).") from exc
    else:
        try:
            with warnings.catch_warnings():
                # torch.load itself may hand TorchScript archives to torch.jit.load (see below).
                warnings.filterwarnings("ignore", message=".*TorchScript archive.*")
                data = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(data, torch.jit.ScriptModule):
                data = data.state_dict()
        except Exception as exc:
            if _is_torchscript_archive(p):
                # OpenAI's CLIP releases are TorchScript archives, which the plain
                # weights-only load above cannot read. torch.jit.load reads serialized
                # TorchScript code and tensors only; it cannot run arbitrary pickled
                # Python objects, so it is safe where a full unpickle is not.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated"
                    data = torch.jit.load(str(p), map_location="cpu").state_dict()
            else:
                raise ValueError(
                    f"{p} could not be read as a weights-only PyTorch checkpoint ({exc}). "
                    "napari-cass never unpickles arbitrary objects; re-save just the weights "
                    "with torch.save(model.state_dict(), path) or as .safetensors."
                ) from exc
    # Unwrap training checkpoints: {"teacher": {...}} (DINO), {"state_dict": ...}, {"model": ...}.
    for _ in range(4):
        if not isinstance(data, Mapping):
            break
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            break
        for key in ("teacher", "state_dict", "model", "module"):
            if isinstance(data.get(key), Mapping):
                data = data[key]
                break
        else:
            break
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{p} holds no weights (expected a mapping of parameter names to tensors).")
    bad = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(
            f"{p} mixes non-tensor entries ({', '.join(map(str, bad[:5]))}) with weights; "
            "save only the model's state_dict."
        )
    return dict(data)


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
        parts = []
        if missing:
            parts.append(f"missing keys {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        raise ValueError(
            f"{source} does not match model {spec_name}: {'; '.join(parts)}. "
            "Is it a checkpoint of another model?"
        )
    for key, ref in expected.items():
        if tuple(out[key].shape) != tuple(ref.shape):
            raise ValueError(
                f"{source}: tensor {key!r} has shape {tuple(out[key].shape)} but model {spec_name} "
                f"expects {tuple(ref.shape)}; the file belongs to a different model."
            )
        if out[key].dtype != ref.dtype:
            out[key] = out[key].to(ref.dtype)
    return out


def _save_safetensors(state: dict[str, torch.Tensor], target: Path, spec: ModelSpec,
                      origin: str, overwrite: bool) -> Path:
    from safetensors.torch import save_file

    from ..io import atomic_write

    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    with atomic_write(target, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={"napari_cass_model": spec.name, "source": origin})
    return target


def _cache_target(spec: ModelSpec) -> Path:
    return _cache_folder(spec) / f"{spec.cache_stem}.safetensors"


def _locate(spec: ModelSpec, offline: bool | None) -> Path | None:
    """A local weights file, ``None`` if a download is needed; offline misses raise."""
    local = _find_in_cache(spec) or _find_in_hf_cache(spec)
    if local is None and _is_offline(offline):
        raise WeightsNotFoundError(_not_found_message(spec, "offline mode, no download attempted"))
    return local


def _obtain(spec: ModelSpec, model: nn.Module, local: Path | None,
            progress: ProgressCallback | None) -> dict[str, torch.Tensor]:
    """Validated state dict for ``model`` from ``local``, or downloaded into our cache."""
    if local is not None:
        return _normalize(load_state_dict_file(local), model, spec.name, local)
    downloaded, tmp_dir = _download(spec, progress)
    try:
        state = _normalize(load_state_dict_file(downloaded), model, spec.name, downloaded)
        _save_safetensors(state, _cache_target(spec), spec, f"{spec.hub().repo_id}/{downloaded.name}",
                          overwrite=True)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return state


def _resolve_weights_arg(weights: str | os.PathLike[str]) -> str | Path:
    if isinstance(weights, os.PathLike):
        return Path(weights)
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


def _build(spec: ModelSpec, weights: str | os.PathLike[str], progress: ProgressCallback | None,
           offline: bool | None) -> nn.Module:
    choice = _resolve_weights_arg(weights)
    local: Path | None = None
    if choice == "pretrained":  # fail fast (before building the model) when offline
        local = _locate(spec, offline)
    elif isinstance(choice, Path) and not choice.is_file():
        raise FileNotFoundError(
            f"Weights file {choice} for {spec.name} does not exist; give an existing "
            f".safetensors/.bin/.pt/.pth file, 'pretrained' or 'random'."
        )
    model = spec.factory()
    if choice == "random":
        warnings.warn(
            f"{spec.name} has random weights: segmentations are meaningless (for tests and demos only).",
            UserWarning,
            stacklevel=3,
        )
    elif isinstance(choice, Path):
        state = _normalize(load_state_dict_file(choice), model, spec.name, choice)
        model.load_state_dict(state, strict=True)
    else:
        model.load_state_dict(_obtain(spec, model, local, progress), strict=True)
    return model.eval()


def build_clip(name: str = "ViT-B-16", weights: str | os.PathLike[str] = "openai", *,
               progress: ProgressCallback | None = None,
               offline: bool | None = None) -> tuple[nn.Module, Callable[..., torch.Tensor]]:
    """Build a CLIP model (eval mode) and its tokenizer.

    ``weights``: "openai" (cache, else download), "random" (full-size random weights,
    warns) or a path to a weights file.
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
        path = _find_in_cache(spec) or _find_in_hf_cache(spec)
        try:
            hub = spec.hub().repo_id
        except Exception:
            hub = ""
        rows.append({
            "model": spec.name, "kind": spec.kind, "present": path is not None,
            "path": str(path) if path is not None else None, "searched": _searched(spec),
            "hub": hub, "expected": spec.expected_files(),
        })
    return rows


def import_weights(path: str | os.PathLike[str], model: str, *, overwrite: bool = False) -> Path:
    """Validate a weights file against ``model`` and store it in the cache as safetensors.

    This is how offline machines get weights: download the file elsewhere, copy it
    over and import it. Every tensor's name and shape is checked first.
    """
    spec = find_model(model)
    source = Path(path).expanduser()
    target = _cache_target(spec)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True / --overwrite to replace it.")
    state = _normalize(load_state_dict_file(source), spec.factory(), spec.name, source)
    return _save_safetensors(state, target, spec, source.name, overwrite=overwrite)


def download_weights(model: str, *, progress: ProgressCallback | None = None,
                     overwrite: bool = False) -> Path:
    """Make sure ``model``'s weights are in the cache (downloading them if needed); return the file."""
    spec = find_model(model)
    existing = _find_in_cache(spec)
    if existing is not None and not overwrite:
        return existing
    if _is_offline(None):
        raise WeightsNotFoundError(_not_found_message(spec, "offline mode, no download attempted"))
    net = spec.factory()
    hf_local = None if overwrite else _find_in_hf_cache(spec)
    if hf_local is not None:  # already in the Hugging Face cache: just convert it into ours
        state = _normalize(load_state_dict_file(hf_local), net, spec.name, hf_local)
        return _save_safetensors(state, _cache_target(spec), spec, hf_local.name, overwrite=True)
    # The old file (if any) is replaced atomically only once the new one is complete.
    _obtain(spec, net, None, progress)
    return _cache_target(spec)
