"""No weights file ever runs code (issue 8), whichever way it reaches napari-cass.

The hostile files are built here: a TorchScript archive whose ``__setstate__``
creates a marker file, and a pickle whose ``__reduce__`` does. Each route a
file can take (CLI import, ``from_pretrained`` with a path, our cache folder,
the Hugging Face cache, a download) must refuse it, and the marker must not
exist afterwards. A control test shows the payload really fires when loaded
the unsafe way, so these tests can fail.
"""

from __future__ import annotations

import ast
import hashlib
import pickle
import shutil
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from _weights_fixtures import (env, hf_snapshot, local_hub, marker_torchscript, reduce_pickle_bytes,  # noqa: F401
                               same_weights, script, tiny_clip, tiny_vit)
from safetensors.torch import save_file

import napari_cass
from napari_cass import cli
from napari_cass.engine import Segmenter
from napari_cass.engine import _weights as W

REFUSAL = "is a TorchScript archive"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    """(TorchScript file with a marker payload, marker path that must never appear)."""
    marker = tmp_path / "marker" / "PWNED"
    marker.parent.mkdir()
    return marker_torchscript(tmp_path / "dino_weights.pt", marker), marker


def test_the_payload_is_live_when_loaded_the_unsafe_way(hostile: tuple[Path, Path]) -> None:
    """Control: torch.jit.load runs the archive's code, so the refusal tests below can fail."""
    path, marker = hostile
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still loads
        loaded = torch.jit.load(str(path))  # our own test file: what napari-cass must never do
    assert marker.read_bytes() == b"A" * 8 and loaded.written == 65 * 8
    marker.unlink()
    payload = reduce_pickle_bytes(marker)
    pickle.loads(payload)  # our own bytes, to show that this payload fires too
    assert marker.exists()


def _assert_refused(message: str, marker: Path) -> None:
    assert REFUSAL in message and "not one of OpenAI's CLIP releases" in message
    assert "safetensors" in message and "weights_only=False" not in message
    assert not marker.exists()


def test_cli_import_refuses_torchscript(env: Path, hostile: tuple[Path, Path], capsys) -> None:
    path, marker = hostile
    assert cli.main(["weights", "import", str(path), "--model", "tiny_vfm"]) == 2
    err = capsys.readouterr().err
    _assert_refused(err, marker)
    assert _sha256(path) in err and str(path) in err
    assert not (env / "vfm" / "tiny_vit_test.safetensors").exists()


def test_from_pretrained_with_a_path_refuses_torchscript(env: Path, hostile: tuple[Path, Path]) -> None:
    path, marker = hostile
    with pytest.warns(UserWarning, match="random weights"), pytest.raises(ValueError) as info:
        Segmenter.from_pretrained(clip="tiny_clip", clip_weights="random", vfm="tiny_vfm",
                                  vfm_weights=str(path), device="cpu")
    _assert_refused(str(info.value), marker)
    with pytest.raises(ValueError) as info:
        Segmenter.from_pretrained(clip="tiny_clip", clip_weights=path, vfm="tiny_vfm",
                                  vfm_weights="random", device="cpu")
    _assert_refused(str(info.value), marker)


def test_torchscript_in_our_cache_folder_is_refused(env: Path, hostile: tuple[Path, Path]) -> None:
    path, marker = hostile
    (env / "vfm").mkdir(parents=True)
    planted = env / "vfm" / "tiny_vit_test.pt"
    shutil.copy(path, planted)
    with pytest.raises(ValueError) as info:
        W.build_vfm("tiny_vfm")  # offline: the planted file is what the cache offers
    _assert_refused(str(info.value), marker)
    assert str(planted) in str(info.value)


def test_torchscript_in_the_hugging_face_cache_is_refused(env: Path, tmp_path: Path,
                                                          hostile: tuple[Path, Path]) -> None:
    path, marker = hostile
    snapshot = hf_snapshot(tmp_path / "hf", "napari-cass-tests/tiny-vit")
    shutil.copy(path, snapshot / "pytorch_model.bin")
    with pytest.raises(ValueError) as info:
        W.build_vfm("tiny_vfm")
    _assert_refused(str(info.value), marker)
    with pytest.raises(ValueError) as info:
        W.download_weights("tiny_vfm")  # converting the HF cache's file into ours
    _assert_refused(str(info.value), marker)
    assert not (env / "vfm" / "tiny_vit_test.safetensors").exists()


def test_downloaded_torchscript_is_refused(env: Path, local_hub: str, hostile: tuple[Path, Path],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    path, marker = hostile

    def hostile_download(repo_id: str, filename: str, *, local_dir, **kwargs) -> str:
        if filename.endswith(".safetensors"):
            raise OSError("404")  # the repository only offers pytorch_model.bin
        target = Path(local_dir) / filename
        shutil.copy(path, target)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hostile_download)
    with pytest.raises(W.WeightsNotFoundError) as info:
        W.download_weights("tiny_vfm")
    _assert_refused(str(info.value), marker)
    assert sorted(p.name for p in (env / "vfm").iterdir()) == []  # nothing kept, temp folder removed


@pytest.mark.parametrize("how", ["torch.save", "raw pickle"])
def test_reduce_payload_pickle_is_refused(env: Path, tmp_path: Path, how: str) -> None:
    marker = tmp_path / "REDUCED"
    path = tmp_path / "weights.bin"
    if how == "torch.save":
        from _weights_fixtures import ReducePayload

        torch.save({"weight": ReducePayload(marker)}, path)
    else:
        path.write_bytes(reduce_pickle_bytes(marker))
    with pytest.raises(ValueError, match="never unpickles") as info:
        W.import_weights(path, "tiny_vfm")
    assert "weights_only=False" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_non_finite_weights_are_refused_naming_file_and_key(env: Path, tmp_path: Path, bad: float,
                                                           suffix: str) -> None:
    state = tiny_vit().state_dict()
    state["blocks.0.attn.qkv.weight"][3, 5] = bad
    path = tmp_path / f"diverged{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    with pytest.raises(ValueError) as info:
        W.import_weights(path, "tiny_vfm")
    msg = str(info.value)
    assert str(path) in msg and "'blocks.0.attn.qkv.weight'" in msg and "holds 1 NaN or infinite" in msg
    assert not (env / "vfm").exists() or not any((env / "vfm").iterdir())


def test_a_folder_given_as_a_weights_file_says_so(env: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "downloaded"
    folder.mkdir()
    save_file(tiny_vit().state_dict(), str(folder / "model.safetensors"))
    with pytest.raises(IsADirectoryError, match=r"is a folder, not a weights file.*model\.safetensors"):
        W.load_state_dict_file(folder)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        W.build_vfm("tiny_vfm", folder)
    with pytest.raises(IsADirectoryError, match="is a folder"):
        W.import_weights(folder, "tiny_vfm")
    assert cli.main(["weights", "import", str(folder), "--model", "tiny_vfm"]) == 2
    err = capsys.readouterr().err
    assert f"{folder} is a folder, not a weights file" in err and "model.safetensors" in err


def test_cache_variable_pointing_at_a_file_says_so(env: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    not_a_folder = tmp_path / "cache.txt"
    not_a_folder.write_text("a file")
    monkeypatch.setenv("NAPARI_CASS_CACHE", str(not_a_folder))
    with pytest.raises(NotADirectoryError, match=r"NAPARI_CASS_CACHE is set to .*cache\.txt, which is a file"):
        W.cache_dir()
    with pytest.raises(NotADirectoryError, match="NAPARI_CASS_CACHE"):
        W.build_vfm("tiny_vfm")
    assert cli.main(["weights", "list"]) == 2
    assert "which is a file, not a folder" in capsys.readouterr().err
    assert not_a_folder.read_text() == "a file"


# ----------------------------------------------------------------------------- OpenAI allowlist
def test_allowlist_matches_open_clips_release_addresses() -> None:
    import open_clip

    assert set(W.OPENAI_CLIP_SHA256.values()) == set(W.CLIP_MODELS)
    for sha, name in W.OPENAI_CLIP_SHA256.items():
        url = open_clip.get_pretrained_cfg(name, "openai")["url"]
        assert f"/clip/models/{sha}/{name}.pt" in url


@pytest.mark.parametrize("model", ["tiny_clip", "tiny_vfm"])
def test_allowlisted_torchscript_is_read_as_data(env: Path, tmp_path: Path, model: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An allowlisted archive gives the module's own tensors, and imports like any file.

    The scripted open_clip CLIP stands in for OpenAI's releases (same layout: a
    TorchScript archive of a CLIP model, with a non-persistent attn_mask buffer).
    """
    torch.manual_seed(0)
    source = (tiny_clip() if model == "tiny_clip" else tiny_vit()).eval()
    path = tmp_path / "release.pt"
    script(source).save(str(path))
    with pytest.raises(ValueError, match=REFUSAL):  # not on the list: refused
        W.load_state_dict_file(path)

    monkeypatch.setitem(W.OPENAI_CLIP_SHA256, _sha256(path), model)
    state = W.read_torchscript_weights(path)
    reference = source.state_dict()
    assert set(reference) <= set(state) and set(state) - set(reference) <= {"attn_mask"}
    assert all(state[k].dtype == reference[k].dtype and torch.equal(state[k], reference[k]) for k in reference)

    stored = W.import_weights(path, model)
    assert stored.suffix == ".safetensors"
    rebuilt = W.build_clip(model)[0] if model == "tiny_clip" else W.build_vfm(model)
    assert same_weights(rebuilt, source)
    other = "tiny_vfm" if model == "tiny_clip" else "tiny_clip"
    with pytest.raises(ValueError, match=f"is OpenAI's {model} release, not {other}"):
        W.load_state_dict_file(path, model=other)


def test_restricted_reader_keeps_declared_parameters_and_buffers_only(tmp_path: Path) -> None:
    """fp16 parameters, buffers, shared storage; plain tensor attributes are not weights."""

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.attn_mask = torch.full((2, 2), -1.0)  # an attribute, not a buffer (OpenAI CLIP has one)
            self.register_buffer("scale", torch.arange(4.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) + self.attn_mask.sum() + self.scale.sum()

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.Sequential(Block(), Block())
            self.pos = torch.nn.Parameter(torch.randn(5, 3).half())
            self.register_buffer("pos_view", self.pos.detach()[1:3])  # shares pos's storage

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.blocks(x)

    torch.manual_seed(0)
    module = Model()
    path = tmp_path / "nested.pt"
    script(module).save(str(path))
    state = W.read_torchscript_weights(path)
    reference = module.state_dict()
    assert state.keys() == reference.keys()
    assert "blocks.0.attn_mask" not in state
    for key, value in reference.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value)


def test_allowlisted_hostile_archive_still_runs_nothing(env: Path, hostile: tuple[Path, Path],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Even on the list, the reader never calls the archive's __setstate__."""
    path, marker = hostile
    monkeypatch.setitem(W.OPENAI_CLIP_SHA256, _sha256(path), "tiny_vfm")
    with pytest.raises(ValueError, match="holds no weights"):
        W.load_state_dict_file(path)
    assert not marker.exists()


def test_allowlisted_archive_with_a_reduce_payload_is_refused(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A data.pkl that calls anything but a tensor rebuild is refused, naming the call."""
    benign = tmp_path / "benign.pt"
    script(torch.nn.Linear(3, 2)).save(str(benign))
    marker = tmp_path / "REDUCED"
    crafted = tmp_path / "crafted.pt"
    with zipfile.ZipFile(benign) as source, zipfile.ZipFile(crafted, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            target.writestr(item, reduce_pickle_bytes(marker) if item.filename.endswith("/data.pkl") else data)
    monkeypatch.setitem(W.OPENAI_CLIP_SHA256, _sha256(crafted), "tiny_vfm")
    with pytest.raises(ValueError, match=r"refers to (io|builtins)\.open, which is not a tensor"):
        W.load_state_dict_file(crafted)
    assert not marker.exists()


def test_no_code_in_the_package_loads_files_unsafely() -> None:
    """No torch.jit.load, no pickle.load(s), torch.load only with weights_only=True."""
    problems = []
    for source in sorted(Path(napari_cass.__file__).parent.rglob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            func, owner = node.func.attr, node.func.value
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            keywords = {k.arg: k.value for k in node.keywords}
            where = f"{source.name}:{node.lineno}"
            if owner_name == "jit" and func == "load":
                problems.append(f"{where} torch.jit.load")
            if owner_name == "pickle" and func in ("load", "loads"):
                problems.append(f"{where} pickle.{func}")
            if owner_name == "torch" and func == "load":
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where} torch.load without weights_only=True")
    assert problems == []


def test_restricted_reader_sets_state_only_on_inert_objects(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A data.pkl that BUILDs a tensor (Tensor.__setstate__ would re-point its storage) is refused."""
    benign = tmp_path / "benign.pt"
    script(torch.nn.Linear(3, 2)).save(str(benign))
    with zipfile.ZipFile(benign) as source:
        names = source.namelist()
        prefix = next(n for n in names if n.endswith("/data.pkl"))[: -len("data.pkl")]
        original = source.read(f"{prefix}data.pkl")
    # GLOBAL _rebuild_tensor_v2, args (storage 0, offset 0, size (1,), stride (1,), False, {}),
    # REDUCE -> a tensor; then EMPTY_TUPLE BUILD on it.
    crafted_pickle = (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"
        b"((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ"
        b"K\x00K\x01\x85K\x01\x85\x89}tR)b."
    )
    assert original != crafted_pickle
    crafted = tmp_path / "crafted.pt"
    with zipfile.ZipFile(benign) as source, zipfile.ZipFile(crafted, "w") as target:
        for item in source.infolist():
            target.writestr(item, crafted_pickle if item.filename.endswith("/data.pkl") else source.read(item))
    monkeypatch.setitem(W.OPENAI_CLIP_SHA256, _sha256(crafted), "tiny_vfm")
    with pytest.raises(ValueError, match="it sets the state of a Tensor"):
        W.load_state_dict_file(crafted)
