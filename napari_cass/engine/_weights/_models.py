"""The models napari-cass can build: architecture, cache file name and download source.

A :class:`ModelSpec` is all the rest of the weights code needs to know about a
model; the tables :data:`CLIP_MODELS` and :data:`VFM_MODELS` are the registry
(tests add tiny models to them).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from torch import nn

__all__ = [
    "CLIP_MODELS",
    "VFM_MODELS",
    "WEIGHT_SUFFIXES",
    "HubSource",
    "ModelSpec",
    "ProgressCallback",
    "find_model",
]

ProgressCallback = Callable[[int, int, str], None]

#: File name endings accepted for weights files, preferred first.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class HubSource:
    """Where a model's weights can be downloaded from.

    Attributes
    ----------
    repo_id : str
        Hugging Face Hub repository, e.g. ``"timm/vit_base_patch8_224.dino"``.
    filenames : tuple of str
        Files of that repository holding the weights, preferred first.
    url : str
        The original release (OpenAI's or Meta's own download), if known.
    """

    repo_id: str
    filenames: tuple[str, ...]
    url: str = ""

    def file_url(self, filename: str | None = None) -> str:
        """Direct download address of one file of the repository (default: the preferred one)."""
        from huggingface_hub import constants

        name = filename or self.filenames[0]
        return f"{constants.ENDPOINT}/{self.repo_id}/resolve/main/{name}"


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

    @property
    def label(self) -> str:
        """``"ViT-B-16 (CLIP)"``: the name users see in messages."""
        return f"{self.name} ({'CLIP' if self.kind == 'clip' else 'DINO / VFM'})"

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


def find_model(name: str, kind: str | None = None) -> ModelSpec:
    """Look a model up by its napari-cass name (or its open_clip / timm name).

    Parameters
    ----------
    name : str
        ``"ViT-B-16"``, ``"dino_vitb8"``, or the timm / open_clip architecture name.
    kind : {"clip", "vfm"}, optional
        Restrict the search to one table.

    Raises
    ------
    ValueError
        For an unknown name, listing the known ones.
    """
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
