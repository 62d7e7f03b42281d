"""Weights files that cost memory or swap bytes: refused before inflating, hashed and parsed once.

Issue 14, items 7, 8 and 9 (malformed pickles). The crafted files are built here:
a ``torch.save`` checkpoint one of whose stored tensor records is replaced by a
deflated gigabyte of zeros (1.1 MB on disk; ``torch.load`` inflates the whole record
before it notices the size, +1 GB of RSS on the machine these tests were written
on), a TorchScript archive renamed over an allowlisted one while it is being
checked, and ``data.pkl`` pickles the restricted reader cannot follow.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from _bombs import zip_with_deflated_record
from _peak_rss import HWM
from _weights_fixtures import env, script, tiny_vit  # noqa: F401

from napari_cass.engine import _weights as W
from napari_cass.engine._weights import _files
from napari_cass.engine._weights._archive import INFLATE_FACTOR, SLACK, tensor_bytes

GB = 1 << 30
TESTS = Path(__file__).parent


@pytest.fixture()
def inflating(tmp_path: Path) -> Path:
    """A checkpoint of tiny_vfm whose first tensor record is 1 GiB of deflated zeros."""
    good = tmp_path / "good.pt"
    torch.save(tiny_vit().state_dict(), good)
    return zip_with_deflated_record(good, tmp_path / "inflating.pt", "/data/0", GB)


def test_a_deflated_record_is_refused_before_torch_load_in_bounded_memory(inflating: Path) -> None:
    assert inflating.stat().st_size < 2_000_000
    with zipfile.ZipFile(inflating) as archive:
        declared = archive.getinfo("good/data/0")
    assert declared.file_size == GB and declared.compress_size < 1_100_000
    code = ("import json, sys\n" + HWM + "from napari_cass.engine._weights import load_state_dict_file\n"
            "before = _hwm()\n"
            "try:\n    load_state_dict_file(sys.argv[1]); out = {'loaded': True}\n"
            "except ValueError as exc:\n    out = {'message': str(exc)}\n"
            "out.update(before=before, peak=_hwm())\n"
            "print(json.dumps(out))")
    done = subprocess.run([sys.executable, "-c", code, str(inflating)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert "would inflate to 1,073.7 MB" in got["message"] and "nothing in it was inflated" in got["message"]
    assert "torch.save(model.state_dict(), path)" in got["message"]
    assert got["peak"] < GB and got["peak"] - got["before"] < 256 << 20


def test_the_model_bounds_what_a_checkpoint_may_inflate_to(env: Path, inflating: Path) -> None:
    """Import and the cache folder compare with the model being loaded; a genuine file loads."""
    model = tiny_vit()
    limit = INFLATE_FACTOR * tensor_bytes(model) + SLACK
    with pytest.raises(ValueError, match=rf"above the {limit / 1e6:,.1f} MB it may take \(the model's own "
                                         rf"tensors take {tensor_bytes(model) / 1e6:,.1f} MB\)"):
        W.import_weights(inflating, "tiny_vfm")
    (env / "vfm").mkdir(parents=True)
    planted = env / "vfm" / "tiny_vit_test.pt"
    planted.write_bytes(inflating.read_bytes())
    with pytest.raises(ValueError, match="would inflate to 1,073.7 MB") as info:
        W.build_vfm("tiny_vfm")  # offline: the planted file is what the cache offers
    assert str(planted) in str(info.value)
    torch.save(model.state_dict(), planted)  # the same model, saved by torch.save: loads
    rebuilt = W.build_vfm("tiny_vfm")
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))


def test_a_checkpoint_far_larger_than_the_model_is_refused(env: Path, tmp_path: Path) -> None:
    """Stored records too: 8x the model's bytes (+64 MB) is not a checkpoint of it."""
    big = tmp_path / "big.pt"
    torch.save({"blob": torch.zeros(20 << 20)}, big)  # 80 MB of float32 for a 0.1 MB model
    assert tensor_bytes(tiny_vit()) < 1 << 20
    with pytest.raises(ValueError, match="more than 8 times .* it is not a checkpoint of this model"):
        W.import_weights(big, "tiny_vfm")


# ----------------------------------------------------------------------------- item 8
def test_a_file_renamed_over_the_listed_one_while_it_is_hashed_is_never_parsed(
        env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The allowlist check and the parse read the same bytes, from one open."""
    torch.manual_seed(0)
    listed_module = torch.nn.Linear(3, 2)
    listed = tmp_path / "release.pt"
    script(listed_module).save(str(listed))
    other = tmp_path / "other.pt"
    script(torch.nn.Linear(3, 2).requires_grad_(False).apply(lambda m: m.weight.fill_(7.0)
                                                              if hasattr(m, "weight") else None)).save(str(other))
    digest = hashlib.sha256(listed.read_bytes()).hexdigest()
    monkeypatch.setitem(W.OPENAI_CLIP_SHA256, digest, "tiny_vfm")

    real_sha256, swaps = hashlib.sha256, []

    def sha256_then_swap(data: bytes = b""):  # the attacker's rename lands while the hash is taken
        if not swaps:
            os.replace(other, listed)
            swaps.append(True)
        return real_sha256(data)

    monkeypatch.setattr(_files.hashlib, "sha256", sha256_then_swap)
    opened: list[str] = []
    real_zipfile = zipfile.ZipFile

    def watch(file, *args, **kwargs):  # what the archive reader opens once the hash is taken
        if swaps:
            opened.append(file if isinstance(file, (str, os.PathLike)) else type(file).__name__)
        return real_zipfile(file, *args, **kwargs)

    monkeypatch.setattr(W._torchscript.zipfile, "ZipFile", watch)
    state = W.load_state_dict_file(listed)
    assert swaps == [True]  # the swap happened: the path now holds the unlisted archive
    assert real_sha256(listed.read_bytes()).hexdigest() != digest
    assert torch.equal(state["weight"], listed_module.weight.detach())  # the listed bytes were parsed
    assert not (state["weight"] == 7.0).any()
    assert opened == ["BytesIO"]  # parsed from the hashed bytes in memory; the path is never reopened


def test_a_torchscript_file_larger_than_any_release_is_refused_unread(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "huge.pt"
    script(torch.nn.Linear(3, 2)).save(str(path))
    monkeypatch.setattr(_files, "MAX_TORCHSCRIPT_BYTES", path.stat().st_size - 1)
    with pytest.raises(ValueError, match="larger than any of OpenAI's CLIP releases"):
        W.load_state_dict_file(path)


# ----------------------------------------------------------------------------- item 9: malformed pickles
MALFORMED = {
    "unknown opcode 0xff (KeyError)": b"\x80\x02\xff.",
    "opcode 0x06, not in any protocol (KeyError)": b"\x80\x02\x06.",
    "truncated BININT2 (struct.error)": b"\x80\x02M\x01",
    "undecodable BINUNICODE (UnicodeDecodeError)": b"\x80\x02X\x02\x00\x00\x00\xff\xfe.",
}


def _with_pickle(benign: Path, target: Path, data: bytes) -> Path:
    with zipfile.ZipFile(benign) as source, zipfile.ZipFile(target, "w") as out:
        for item in source.infolist():
            out.writestr(item.filename, data if item.filename.endswith("/data.pkl") else source.read(item))
    return target


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_pickles_give_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    benign = tmp_path / "benign.pt"
    script(torch.nn.Linear(3, 2)).save(str(benign))
    crafted = _with_pickle(benign, tmp_path / "crafted.pt", MALFORMED[case])
    monkeypatch.setitem(W.OPENAI_CLIP_SHA256, hashlib.sha256(crafted.read_bytes()).hexdigest(), "tiny_vfm")
    with pytest.raises(ValueError, match=r"could not be read as a TorchScript weights archive: .*refusing it") \
            as info:
        W.load_state_dict_file(crafted)
    assert str(crafted) in str(info.value)
    with pytest.raises(ValueError, match="refusing it"):  # the reader itself, given the bytes
        W.read_torchscript_weights(io.BytesIO(crafted.read_bytes()), name="crafted.pt")


def test_a_script_object_without_state_holds_no_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NEWOBJ on a TorchScript class skips __init__: the reader found no ``state`` (AttributeError)."""
    benign = tmp_path / "benign.pt"
    script(torch.nn.Linear(3, 2)).save(str(benign))
    crafted = _with_pickle(benign, tmp_path / "bare.pt", b"\x80\x02c__torch__\nBare\n)\x81.")
    monkeypatch.setitem(W.OPENAI_CLIP_SHA256, hashlib.sha256(crafted.read_bytes()).hexdigest(), "tiny_vfm")
    with pytest.raises(ValueError, match="holds no weights"):
        W.load_state_dict_file(crafted)
