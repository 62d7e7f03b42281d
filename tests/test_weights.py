"""Weight resolution, cache, checked loading and import (napari_cass.engine._weights).

All models here have random weights (small test models registered in the model
tables); only the mechanics are checked: where files are looked for, what errors
say, and that tensors round-trip exactly. Hostile files: test_weights_security.py;
the first run without weights: test_weights_first_run.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

import pytest
import torch
from _weights_fixtures import env, hf_snapshot, local_hub, same_weights, tiny_clip, tiny_vit  # noqa: F401
from safetensors.torch import load_file, save_file
from torch import nn

from napari_cass.engine import _weights as W


def test_cache_dir_follows_environment(env: Path) -> None:
    assert W.cache_dir() == env


def test_offline_miss_names_files_folders_hub_and_import_command(env: Path) -> None:
    with pytest.raises(W.WeightsNotFoundError) as info:
        W.build_vfm("tiny_vfm")
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.models == ("tiny_vfm",)
    assert "HF_HUB_OFFLINE=1" in msg
    assert "no tiny_vit_test.safetensors (or .bin, .pt, .pth)" in msg
    assert str(env / "vfm") in msg
    assert "napari-cass-tests/tiny-vit/resolve/main/model.safetensors" in msg
    assert "https://example.invalid/tiny_vit.pth" in msg
    assert "napari-cass weights import PATH --model tiny_vfm" in msg
    assert "overwrite=True" not in msg and "[Errno" not in msg


def test_offline_miss_for_the_default_clip_fails_before_building(env: Path, monkeypatch) -> None:
    def boom() -> nn.Module:
        raise AssertionError("the model must not be built when its weights are missing")

    spec = dataclasses.replace(W.CLIP_MODELS["ViT-B-16"], factory=boom)
    monkeypatch.setitem(W.CLIP_MODELS, "ViT-B-16", spec)
    with pytest.raises(W.WeightsNotFoundError) as info:
        W.build_clip("ViT-B-16", "openai")
    msg = str(info.value)
    assert "ViT-B-16_openai.safetensors" in msg
    assert "timm/vit_base_patch16_clip_224.openai" in msg
    assert "openaipublic.azureedge.net/clip/models/" in msg  # the original release is accepted too
    assert "--model ViT-B-16" in msg


def test_napari_offline_variable_also_counts(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("NAPARI_CASS_OFFLINE", "1")
    with pytest.raises(W.WeightsNotFoundError, match="NAPARI_CASS_OFFLINE=1"):
        W.build_vfm("tiny_vfm")


def test_dino_teacher_checkpoint_imports_and_round_trips(env: Path, tmp_path: Path) -> None:
    source = tiny_vit()
    teacher = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    teacher["head.mlp.0.weight"] = torch.zeros(4, 32)  # DINO's training-only projection head
    ckpt = tmp_path / "dino_teacher.pth"
    torch.save({"teacher": teacher}, ckpt)

    stored = W.import_weights(ckpt, "tiny_vfm")
    assert stored == env / "vfm" / "tiny_vit_test.safetensors"
    assert set(load_file(str(stored))) == set(source.state_dict())
    with pytest.raises(FileExistsError, match="add --overwrite") as info:
        W.import_weights(ckpt, "tiny_vfm")
    assert "overwrite=True" not in str(info.value)
    W.import_weights(ckpt, "tiny_vfm", overwrite=True)

    loaded = W.build_vfm("tiny_vfm")  # offline, found in the cache
    assert not loaded.training
    assert same_weights(loaded, source)
    row = [r for r in W.weights_status() if r["model"] == "tiny_vfm"][0]
    assert row["present"] and row["path"] == str(stored) and row["kind"] == "vfm"


def test_shape_mismatch_names_file_key_and_both_shapes(env: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.safetensors"
    save_file(tiny_vit(dim=64).state_dict(), str(wrong))
    with pytest.raises(ValueError) as info:
        W.import_weights(wrong, "tiny_vfm")
    msg = str(info.value)
    assert "wrong.safetensors" in msg and "'cls_token'" in msg
    assert "(1, 1, 64)" in msg and "(1, 1, 32)" in msg
    assert not (env / "vfm").exists() or not any((env / "vfm").iterdir())


def test_missing_and_unexpected_keys_are_reported(env: Path, tmp_path: Path) -> None:
    state = tiny_vit().state_dict()
    state.pop("norm.weight")
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"partial\.pth.*missing keys norm\.weight.*unexpected keys extra\.weight"):
        W.build_vfm("tiny_vfm", path)


def test_checkpoint_with_pickled_objects_is_refused(env: Path, tmp_path: Path) -> None:
    path = tmp_path / "full_checkpoint.pth"
    torch.save({"model": tiny_vit().state_dict(), "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(ValueError, match="never unpickles") as info:
        W.load_state_dict_file(path)
    assert "weights_only=False" not in str(info.value)
    assert "state_dict()" in str(info.value)


def test_explicit_clip_file_with_openai_extras(env: Path, tmp_path: Path) -> None:
    source = tiny_clip()
    state = {f"module.{k}": v.half() for k, v in source.state_dict().items()}  # DDP prefix, fp16
    state["input_resolution"] = torch.tensor(224)  # keys OpenAI's archives carry
    state["logit_scale"] = state["module.logit_scale"].reshape(1)
    del state["module.logit_scale"]
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    model, tokenizer = W.build_clip("tiny_clip", path)
    assert not model.training
    ref = source.state_dict()
    for key, value in model.state_dict().items():
        assert value.dtype == ref[key].dtype
        assert torch.equal(value, ref[key].half().float())
    assert tokenizer(["a cat"]).shape == (1, 77)


def test_random_weights_warn(env: Path) -> None:
    with pytest.warns(UserWarning, match="random weights"):
        model = W.build_vfm("tiny_vfm", "random")
    assert not model.training


def test_bad_names_and_paths(env: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown vision foundation model 'dino_giant'.*dino_vitb8"):
        W.build_vfm("dino_giant")
    with pytest.raises(ValueError, match="Unknown CLIP model.*ViT-B-16"):
        W.find_model("RN50", "clip")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        W.build_vfm("tiny_vfm", tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="'pretrained'.*'random'"):
        W.build_vfm("tiny_vfm", "imagenet")
    assert W.find_model("vit_base_patch8_224.dino").name == "dino_vitb8"


def test_weights_status_lists_every_model_as_missing(env: Path) -> None:
    rows = W.weights_status()
    names = [r["model"] for r in rows]
    for expected in ("ViT-B-16", "ViT-B-32", "ViT-L-14", "dino_vitb8", "dino_vits8", "dino_vitb16"):
        assert expected in names
    assert not any(r["present"] for r in rows)
    b16 = rows[names.index("ViT-B-16")]
    assert b16["hub"] == "timm/vit_base_patch16_clip_224.openai"
    assert b16["expected"][0] == "ViT-B-16_openai.safetensors"
    assert str(env / "clip") in b16["searched"]
    assert rows[names.index("dino_vitb8")]["hub"] == "timm/vit_base_patch8_224.dino"


def test_hugging_face_cache_is_used_when_present(env: Path, tmp_path: Path) -> None:
    """A file already in the HF cache (e.g. from an earlier timm run) needs no download."""
    snapshot = hf_snapshot(tmp_path / "hf", "napari-cass-tests/tiny-vit")
    source = tiny_vit()
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))
    assert same_weights(W.build_vfm("tiny_vfm"), source)
    # `weights download` converts it into our cache without any network access.
    stored = W.download_weights("tiny_vfm")
    assert stored == env / "vfm" / "tiny_vit_test.safetensors"
    assert set(load_file(str(stored))) == set(source.state_dict())


def test_download_lands_in_cache_with_progress(env: Path, local_hub: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    source = tiny_vit()
    calls: list[str] = []

    def fake_download(repo_id: str, filename: str, *, local_dir, tqdm_class=None, **kwargs):
        calls.append(f"{repo_id}/{filename}")
        assert kwargs["etag_timeout"] <= 10  # a short metadata timeout, not the 60 s retry window
        if filename == "model.safetensors":
            raise OSError("404: no safetensors variant")
        path = Path(local_dir) / filename
        torch.save(source.state_dict(), path)
        if tqdm_class is not None:
            bar = tqdm_class(total=200, disable=True)
            bar.update(120)
            bar.update(80)
            bar.close()
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    seen: list[tuple[int, int, str]] = []
    model = W.build_vfm("tiny_vfm", progress=lambda d, t, m: seen.append((d, t, m)))
    assert calls == ["napari-cass-tests/tiny-vit/model.safetensors", "napari-cass-tests/tiny-vit/pytorch_model.bin"]
    assert same_weights(model, source)
    assert [(d, t) for d, t, _ in seen] == [(120, 200), (200, 200)]
    assert "tiny_vfm" in seen[0][2]
    assert sorted(p.name for p in (env / "vfm").iterdir()) == ["tiny_vit_test.safetensors"]  # temp removed


def test_download_failure_explains_what_to_do(env: Path, local_hub: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def broken_download(*args, **kwargs):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", broken_download)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(W.WeightsNotFoundError) as info:
            W.download_weights("tiny_vfm")
    msg = str(info.value)
    assert "the download failed" in msg and "ConnectionError: connection reset by peer" in msg
    assert "napari-cass weights import PATH --model tiny_vfm" in msg
    assert not any(p.name.startswith(".download") for p in (env / "vfm").iterdir())


def test_random_weights_are_the_same_in_every_process() -> None:
    """CLI runs, server replicas and Ray workers must build identical random models."""
    import warnings

    from napari_cass.engine._weights import build_vfm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.manual_seed(1)
        first = build_vfm("dino_vits8", "random").state_dict()
        torch.manual_seed(2)  # the global generator's state must not matter
        second = build_vfm("dino_vits8", "random").state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
