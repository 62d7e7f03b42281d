"""OpenAI's TorchScript CLIP releases, read as data: nothing in the archive is executed.

A TorchScript archive is a model with its own code: TorchScript's loader runs the
archive's ``__setstate__`` methods, so a crafted file can do anything the user
can (write files, for example). napari-cass therefore never calls it. It accepts
a TorchScript archive only when the file's SHA-256 is one of OpenAI's CLIP
releases (:data:`OPENAI_CLIP_SHA256`, taken from the release addresses, which
carry each file's SHA-256), and even then reads it with a restricted unpickler:
tensor-rebuild functions and storage loads only, every ``__torch__`` class
replaced by an inert attribute holder. Which attributes are parameters or
buffers is read from the ``__parameters__`` / ``__buffers__`` lists of the
archive's class declarations, parsed with :mod:`ast` (parsed, never run).
"""

from __future__ import annotations

import ast
import collections
import hashlib
import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = [
    "MAX_TORCHSCRIPT_BYTES",
    "OPENAI_CLIP_SHA256",
    "file_sha256",
    "is_torchscript_archive",
    "read_torchscript_weights",
    "refusal_message",
]

#: SHA-256 of OpenAI's CLIP release files, mapped to the napari-cass model name.
#: From the release addresses in open_clip's ``pretrained.py``
#: (``https://openaipublic.azureedge.net/clip/models/<sha256>/<name>.pt``).
OPENAI_CLIP_SHA256: dict[str, str] = {
    "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f": "ViT-B-16",
    "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af": "ViT-B-32",
    "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836": "ViT-L-14",
}

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
#: Largest TorchScript file read (OpenAI's largest CLIP release, ViT-L-14, is 890 MB).
MAX_TORCHSCRIPT_BYTES = 1 << 30
_MAX_CODE_BYTES = 4 << 20  # class declarations bigger than this are not parsed
_MAX_DEPTH = 64


def is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a zip archive carrying TorchScript code or constants."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("constants.pkl") or "/code/" in n or n.startswith("code/") for n in names)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def refusal_message(path: Path, sha256: str) -> str:
    """Why a TorchScript file is refused, and how to turn it into a file napari-cass reads."""
    known = ", ".join(sorted(set(OPENAI_CLIP_SHA256.values())))
    return (
        f"{path} is a TorchScript archive (a model that carries its own code), and its SHA-256 "
        f"{sha256} is not one of OpenAI's CLIP releases ({known}). napari-cass never runs code "
        "from a weights file, so it reads TorchScript only for those releases. If you trust this "
        "file, convert it where running its code is acceptable (e.g. a throw-away environment): "
        "load it there with PyTorch's TorchScript loader (torch.jit), save the weights with "
        "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors'), and import that "
        "file: napari-cass weights import weights.safetensors --model NAME. Otherwise download "
        "the weights as .safetensors from the model's Hugging Face page."
    )


class _ScriptObject:
    """Inert stand-in for an instance of a TorchScript class: it only holds its pickled state."""

    torch_type = "__torch__"
    state: Any = None  # also for instances made by NEWOBJ, which skips __init__

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE on the class: build nothing
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:  # BUILD: keep the state, run nothing
        self.state = state


class _StorageType:
    """Marker for a ``torch.<Type>Storage`` global: only its dtype is used."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("a tensor refers to something that is not a storage")
    return storage.as_strided(tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset))


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None) -> Any:
    return data


def _as_list(data: Any) -> list:
    return list(data)


def _restore_type_tag(value: Any, type_str: Any) -> Any:
    return value


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
    ("torch", "device"): str,
    **{("torch.jit._pickle", f"build_{kind}list"): _as_list
       for kind in ("int", "float", "double", "bool", "tensor")},
}


class _Unpickler(pickle._Unpickler):  # the Python implementation: see below
    """Resolves only tensor rebuilds, storages and inert ``__torch__`` classes.

    TorchScript pickles enum values as ``REDUCE`` with a bare (non-tuple) argument,
    which the C unpickler rejects; the pure-Python one (stdlib, same opcodes) accepts
    it. ``data.pkl`` holds no tensor data, so its speed does not matter.
    """

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix = archive, prefix
        self._storages: dict[str, torch.Tensor] = {}
        self._classes: dict[str, type] = {}
        self.types: set[str] = set()

    def _load_build(self) -> None:
        """``BUILD`` only on the inert stand-ins (never a tensor's own ``__setstate__``)."""
        if not isinstance(self.stack[-2], _ScriptObject):
            raise pickle.UnpicklingError(f"it sets the state of a {type(self.stack[-2]).__name__}")
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    dispatch[pickle.BUILD[0]] = _load_build

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self._classes:
                self._classes[qualified] = type(name, (_ScriptObject,), {"torch_type": qualified})
                self.types.add(qualified)
            return self._classes[qualified]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which is not a tensor")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and re.fullmatch(r"[0-9]{1,12}", pid[2]) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unexpected persistent reference {pid!r:.80}")
        kind, key, numel = pid[1], pid[2], pid[4]
        if key not in self._storages:
            try:
                raw = self._archive.read(f"{self._prefix}data/{key}")
            except KeyError as exc:
                raise pickle.UnpicklingError(f"tensor data {key} is missing") from exc
            itemsize = torch.empty(0, dtype=kind.dtype).element_size()
            if len(raw) < numel * itemsize:
                raise pickle.UnpicklingError(f"tensor data {key} is truncated")
            buffer = bytearray(raw)
            del raw, buffer[numel * itemsize:]
            self._storages[key] = (torch.frombuffer(buffer, dtype=kind.dtype) if numel
                                   else torch.empty(0, dtype=kind.dtype))
        return self._storages[key]


def _declared_tensors(archive: zipfile.ZipFile, prefix: str, qualified: str) -> set[str] | None:
    """The ``__parameters__`` + ``__buffers__`` a class declares, parsed (not run) from its code.

    ``None`` when the declaration cannot be found: then every tensor attribute is kept.
    """
    module, _, name = qualified.rpartition(".")
    member = f"{prefix}code/{module.replace('.', '/')}.py"
    try:
        info = archive.getinfo(member)
        if info.file_size > _MAX_CODE_BYTES:
            return None
        tree = ast.parse(archive.read(member).decode("utf-8"))
    except (KeyError, UnicodeDecodeError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            names: set[str] = set()
            for item in node.body:
                if (isinstance(item, ast.Assign) and len(item.targets) == 1
                        and isinstance(item.targets[0], ast.Name)
                        and item.targets[0].id in ("__parameters__", "__buffers__")
                        and isinstance(item.value, (ast.List, ast.Tuple))):
                    names.update(e.value for e in item.value.elts
                                 if isinstance(e, ast.Constant) and isinstance(e.value, str))
            return names
    return None


def _collect(obj: _ScriptObject, prefix: str, declared: dict[str, set[str] | None],
             out: dict[str, torch.Tensor], seen: set[int], depth: int) -> None:
    if id(obj) in seen or depth > _MAX_DEPTH:
        return
    seen.add(id(obj))
    if not isinstance(obj.state, dict):  # a custom __getstate__: no attribute names to use
        return
    keep = declared.get(obj.torch_type)
    for key, value in obj.state.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, torch.Tensor) and (keep is None or key in keep):
            out[prefix + key] = value
        elif isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{key}.", declared, out, seen, depth + 1)


class _Refused(ValueError):
    """A readable archive napari-cass does not take (said as is, not as a parse error)."""


def read_torchscript_weights(path: Path | BinaryIO, name: str | None = None) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive, read without executing anything.

    Parameters
    ----------
    path : Path or binary file
        A TorchScript ``.pt`` archive (``torch.jit.save`` layout: ``<name>/data.pkl``,
        ``<name>/data/<key>``, ``<name>/code/...``), or its bytes in an open file (what
        :func:`load_state_dict_file` hashed, so that the bytes checked are the bytes read).
    name : str, optional
        The file's name in messages (default: ``path``).

    Returns
    -------
    dict of str to Tensor
        The same names and values as the module's ``state_dict()`` (CPU tensors).

    Raises
    ------
    ValueError
        When the archive refers to anything but tensors and TorchScript classes, is
        not laid out as expected, or its pickle is malformed (an unknown opcode, a
        missing mark: anything the restricted unpickler cannot follow).
    """
    name = str(path) if name is None else name
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") <= 1]
            if len(pickles) != 1:
                raise _Refused(f"{name} is not a TorchScript archive napari-cass can read "
                               f"(expected one data.pkl, found {len(pickles)}).")
            prefix = pickles[0][: -len("data.pkl")]
            order = archive.read(f"{prefix}byteorder").decode().strip() \
                if f"{prefix}byteorder" in archive.namelist() else "little"
            if order != "little":
                raise _Refused(f"{name} was saved on a {order}-endian machine; convert it to "
                               "safetensors there.")
            unpickler = _Unpickler(archive.read(pickles[0]), archive, prefix)
            root = unpickler.load()
            if not isinstance(root, _ScriptObject):
                raise _Refused(f"{name} does not hold a TorchScript module.")
            declared = {t: _declared_tensors(archive, prefix, t) for t in unpickler.types}
    except _Refused:
        raise
    except Exception as exc:  # a malformed pickle fails in many ways (an unknown opcode: KeyError)
        why = str(exc) if isinstance(exc, pickle.UnpicklingError) else \
            f"the data are malformed ({type(exc).__name__}: {exc})"
        raise ValueError(f"{name} could not be read as a TorchScript weights archive: {why}; "
                         "refusing it.") from exc
    out: dict[str, torch.Tensor] = {}
    _collect(root, "", declared, out, set(), 0)
    return out
