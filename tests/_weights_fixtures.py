"""Shared pieces of the weights tests: tiny registered models, isolated caches, local
Hub endpoints, and weights files that try to run code (built here, in the tests).

Every model has random weights; only the mechanics of finding, reading and
refusing files are checked.
"""

from __future__ import annotations

import http.server
import pickle
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Tuple

import pytest
import torch
from torch import nn

from napari_cass.engine import _weights as W


def tiny_vit(dim: int = 32) -> nn.Module:
    """A one-block ViT with 8 px patches: the registered ``tiny_vfm`` model."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=32, patch_size=8, embed_dim=dim, depth=1, num_heads=2, num_classes=0)


def tiny_clip() -> nn.Module:
    """The engine's tiny random CLIP: the registered ``tiny_clip`` model."""
    from napari_cass.engine.testing import tiny_models

    return tiny_models()[0]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Same keys and bit-identical tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty napari-cass cache, empty HF cache, offline, and two tiny registered models."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_CASS_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("NAPARI_CASS_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("NAPARI_CASS_HUB_TIMEOUT", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setitem(W.VFM_MODELS, "tiny_vfm", W.ModelSpec(
        name="tiny_vfm", kind="vfm", arch="tiny_vit_test", cache_stem="tiny_vit_test", factory=tiny_vit,
        source=W.HubSource("napari-cass-tests/tiny-vit", ("model.safetensors", "pytorch_model.bin"),
                           "https://example.invalid/tiny_vit.pth"),
    ))
    monkeypatch.setitem(W.CLIP_MODELS, "tiny_clip", W.ModelSpec(
        name="tiny_clip", kind="clip", arch="tiny_clip_test", cache_stem="tiny_clip_openai",
        factory=tiny_clip, tokenizer="ViT-B-16",
        source=W.HubSource("napari-cass-tests/tiny-clip", ("open_clip_model.safetensors",)),
    ))
    return cache


def hf_snapshot(hf_root: Path, repo_id: str) -> Path:
    """An empty snapshot folder in the Hugging Face cache layout, ``refs/main`` pointing at it."""
    repo = hf_root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    return snapshot


def _use_endpoint(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", url)


class _AnswerEverything(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def local_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Hub endpoint on 127.0.0.1 that answers every request (downloads are faked per test)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AnswerEverything)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    _use_endpoint(monkeypatch, url)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def closed_hub(monkeypatch: pytest.MonkeyPatch) -> str:
    """A Hub endpoint nobody listens on (connection refused): a machine without network."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    _use_endpoint(monkeypatch, url)
    return url


@pytest.fixture()
def silent_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Hub endpoint that accepts connections and never answers (a black-holing firewall)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    _use_endpoint(monkeypatch, url)
    try:
        yield url
    finally:
        listener.close()


# ----------------------------------------------------------------------------- hostile files
class MarkerModule(nn.Module):
    """A TorchScript module whose ``__setstate__`` creates a file: it runs when loaded.

    ``torch.jit.load`` calls ``__setstate__``; ``torch.from_file(shared=True)``
    creates ``path`` and the write goes to disk. The weights-file attack of issue 8,
    with a harmless payload. (Tensors only in the state: a submodule's TorchScript
    type name changes with what else was scripted in the process.)
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(2, 3))
        self.path = path
        self.written = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool, torch.Tensor]:  # noqa: UP006 (TorchScript needs Tuple)
        return (self.path, self.training, self.weight)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool, torch.Tensor]) -> None:  # noqa: UP006
        self.path = state[0]
        self.training = state[1]
        self.weight = state[2]
        payload = torch.from_file(state[0], shared=True, size=8, dtype=torch.uint8)
        payload.fill_(65)
        self.written = int(payload.sum())


def script(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` without its deprecation warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def marker_torchscript(path: Path, marker: Path) -> Path:
    """Write a TorchScript archive that creates ``marker`` when its code runs."""
    script(MarkerModule(str(marker))).save(str(path))
    assert not marker.exists()
    return path


class ReducePayload:
    """A pickled object whose ``__reduce__`` creates a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def reduce_pickle_bytes(marker: Path) -> bytes:
    """A protocol-2 pickle of :class:`ReducePayload` (``builtins.open`` + ``REDUCE``)."""
    return pickle.dumps({"weight": ReducePayload(marker)}, protocol=2)
