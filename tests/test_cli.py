"""The ``napari-cass`` command line, driven through ``main([...])``.

Segmentation tests use tiny random-weight models (``tiny_models``) in place of the
real ones: the masks are meaningless, only the mechanics are checked (files,
palette, classes.json, overwrite refusal, error reporting, exit codes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_cass import cli
from napari_cass.io import read_classes_json, read_label_image


@pytest.fixture()
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_CASS_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return cache


def _write_images(folder: Path) -> dict[str, tuple[int, int]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / "street.png")
    Image.fromarray(rng.integers(0, 255, (36, 30), dtype=np.uint8)).save(folder / "grey.png")
    return {"street": (40, 56), "grey": (36, 30)}


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_segment_folder_writes_masks_overlays_and_classes(tmp_path, cli_builds, capsys) -> None:
    shapes = _write_images(tmp_path / "in")
    (tmp_path / "in" / "broken.png").write_bytes(b"this is not a png")
    (tmp_path / "in" / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    rc = cli.main(["segment", str(tmp_path / "in"), "--classes", "cat | kitten, dog",
                   "--background", "sky, wall", "--method", "clip", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 1  # one image failed, the others were written
    assert "broken.png" in captured.err and "skipped" in captured.err
    assert "Segmented 2 of 3 image(s)" in captured.out
    assert "Traceback" not in captured.err
    assert _visible(out) == [
        "classes.json", "grey.png", "grey_overlay.png", "street.png", "street_overlay.png"]
    assert not [p for p in out.iterdir() if ".tmp" in p.name]

    doc = read_classes_json(out / "classes.json")
    classes = doc["classes"]
    assert [c["name"] for c in classes] == ["background", "cat", "dog"]
    assert classes[0]["synonyms"] == ["sky", "wall"] and classes[1]["synonyms"] == ["cat", "kitten"]
    assert classes[0]["color"] == [0, 0, 0]
    assert doc["method"] == "clip" and doc["preset"] == "interactive" and doc["has_background"] is True
    assert doc["run"] == {"method": "clip", "preset": "interactive", "clip": "ViT-B-16",
                          "vfm": "dino_vitb8", "random_weights": False}
    assert doc["images"] == {stem: f"../in/{stem}.png"  # relative to the output folder
                             for stem in ("broken", "grey", "street")}

    for stem, shape in shapes.items():
        with Image.open(out / f"{stem}.png") as mask:
            assert mask.mode == "P"
            palette = np.array(mask.getpalette()[:9]).reshape(3, 3)
        assert palette.tolist() == [c["color"] for c in classes]
        labels = read_label_image(out / f"{stem}.png")
        assert labels.shape == shape and labels.max() < 3
        with Image.open(out / f"{stem}_overlay.png") as overlay:
            assert overlay.mode == "RGB" and overlay.size == (shape[1], shape[0])
    assert len(cli_builds) == 1


def test_a_finished_folder_is_not_redone_and_overwrite_redoes_it(tmp_path, cli_builds, capsys) -> None:
    _write_images(tmp_path / "in")
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "in" / "street.png"), "--classes", "cat, dog", "--method", "clip",
            "--out", str(out)]
    assert cli.main(args) == 0
    stamp = (out / "street.png").stat().st_mtime_ns
    capsys.readouterr()

    assert cli.main(args) == 0  # resume: everything is done, no model is loaded
    captured = capsys.readouterr()
    assert "already segmented" in captured.out and "--overwrite" in captured.out
    assert len(cli_builds) == 1 and (out / "street.png").stat().st_mtime_ns == stamp

    assert cli.main([*args, "--overwrite"]) == 0
    assert len(cli_builds) == 2 and "Segmented 1 of 1" in capsys.readouterr().out


def test_files_not_made_by_napari_cass_are_refused_before_the_model_loads(tmp_path, cli_builds,
                                                                           capsys) -> None:
    _write_images(tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "street.png").write_bytes(b"the user's own file")
    args = ["segment", str(tmp_path / "in" / "street.png"), "--classes", "cat", "--out", str(out)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "street.png" in err and "classes.json" in err and "--overwrite" in err
    assert err.count("\n") == 1 and not cli_builds  # one clear line, before building the model
    assert (out / "street.png").read_bytes() == b"the user's own file"
    assert cli.main([*args, "--overwrite"]) == 0
    assert read_label_image(out / "street.png").shape == (40, 56)


def test_without_background_class_k_is_mask_value_k_plus_1(tmp_path, cli_builds, capsys) -> None:
    """Random-weight models: mask value 0 stays "background" (unlabelled), as in the plugin's exports."""
    _write_images(tmp_path / "in")
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("road, street\ncar\n")
    out = tmp_path / "out"
    rc = cli.main(["segment", str(tmp_path / "in" / "grey.png"), "--classes-file", str(classes_file),
                   "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    doc = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in doc["classes"]] == ["background", "road", "car"]
    assert doc["classes"][1]["synonyms"] == ["road", "street"] and doc["classes"][0]["synonyms"] == []
    assert doc["has_background"] is False and doc["method"] == "cass"
    assert doc["classes"][0]["color"] == [0, 0, 0]
    assert all(c["color"] != [0, 0, 0] for c in doc["classes"][1:])
    labels = read_label_image(out / "grey.png")
    assert labels.min() >= 1 and labels.max() <= 2  # every pixel gets a class: values 1..2
    assert cli_builds[0].method == "cass" and cli_builds[0].clip == "ViT-B-16"


def test_recursive_folders_and_name_collisions(tmp_path, cli_builds, capsys) -> None:
    from napari_cass.io import plan_outputs

    for sub in ("a", "b"):
        _write_images(tmp_path / "in" / sub)
    out = tmp_path / "out"
    # Without --recursive the top folder has no images.
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "x", "--out", str(out)]) == 2
    assert "--recursive" in capsys.readouterr().err
    assert not out.exists()
    inputs = str(tmp_path / "in" / "a")  # masks written among the images: refused
    assert cli.main(["segment", inputs, "--classes", "x", "--out", inputs]) == 2
    assert "is also an input folder" in capsys.readouterr().err
    # Two inputs with the same file name get different output names, recorded in classes.json.
    first, second = tmp_path / "in" / "a" / "grey.png", tmp_path / "in" / "b" / "grey.png"
    rc = cli.main(["segment", str(first), str(second), "--classes", "x", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 and f"{second.resolve()} is written as grey_2.png" in err
    assert _visible(out) == ["classes.json", "grey.png", "grey_2.png", "grey_2_overlay.png",
                             "grey_overlay.png"]
    assert read_classes_json(out / "classes.json")["images"] == {
        "grey": "../in/a/grey.png", "grey_2": "../in/b/grey.png"}  # relative to the output folder

    plan = plan_outputs([str(tmp_path / "in")], tmp_path / "elsewhere", recursive=True)
    assert [item.name for item in plan.images] == ["a_grey", "a_street", "b_grey", "b_street"]


@pytest.mark.parametrize("argv, message", [
    (["segment", "missing.png", "--classes", "cat", "--out", "o"], "does not exist"),
    (["segment", "{img}", "--classes", " , ", "--out", "o"], "empty"),
    (["segment", "{img}", "--classes", "cat", "--background", ",", "--out", "o"], "--background is empty"),
    (["segment", "{img}", "--classes-file", "nope.txt", "--out", "o"], "Class file"),
    (["segment", "{img}", "--classes", "cat", "--threads", "0", "--out", "o"], "--threads"),
])
def test_bad_input_is_one_clear_line(tmp_path, cli_builds, capsys, monkeypatch, argv, message) -> None:
    _write_images(tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{img}", str(tmp_path / "in" / "grey.png")) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("napari-cass: error:")
    assert "Traceback" not in err
    assert not cli_builds


def test_debug_shows_the_traceback(tmp_path, cli_builds) -> None:
    with pytest.raises(Exception, match="does not exist"):
        cli.main(["segment", str(tmp_path / "missing.png"), "--classes", "cat", "--out", str(tmp_path),
                  "--debug"])


def test_version_and_usage(capsys) -> None:
    from napari_cass import __version__

    assert cli.main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert cli.main([]) == 2
    assert cli.main(["segment", "x.png"]) == 2  # --out and --classes missing: argparse usage error
    assert "required" in capsys.readouterr().err
    assert cli.main(["eval", "--help"]) == 0  # the evaluation helper's subcommand is registered


def test_cli_choices_match_the_engine() -> None:
    from napari_cass.engine import METHODS, PRESETS
    from napari_cass.engine._weights import CLIP_MODELS, VFM_MODELS

    assert tuple(cli.METHOD_CHOICES) == tuple(METHODS)
    assert set(cli.PRESET_CHOICES) == set(PRESETS)
    assert set(cli.CLIP_CHOICES) <= set(CLIP_MODELS) and set(cli.VFM_CHOICES) <= set(VFM_MODELS)


def test_weights_list_with_an_empty_cache(empty_cache, capsys) -> None:
    assert cli.main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert f"Cache folder: {empty_cache}" in out
    lines = [ln for ln in out.splitlines() if ln.startswith(("ViT-", "dino_"))]
    assert len(lines) == 6 and all(" missing " in ln for ln in lines)
    assert "ViT-B-16_openai.safetensors" in out and "timm/vit_base_patch8_224.dino" in out
    assert str(empty_cache / "clip") in out and str(empty_cache / "vfm") in out
    assert "weights import PATH --model NAME" in out


def test_weights_import_and_offline_download(empty_cache, tmp_path, monkeypatch, capsys) -> None:
    from timm.models.vision_transformer import VisionTransformer

    from napari_cass.engine import _weights as W

    def tiny_vit(dim: int = 32):
        return VisionTransformer(img_size=32, patch_size=8, embed_dim=dim, depth=1, num_heads=2, num_classes=0)

    monkeypatch.setitem(W.VFM_MODELS, "tiny_vfm", W.ModelSpec(
        name="tiny_vfm", kind="vfm", arch="tiny_vit_test", cache_stem="tiny_vit_test", factory=tiny_vit,
        source=W.HubSource("napari-cass-tests/tiny-vit", ("model.safetensors",)),
    ))
    good = tmp_path / "good.pth"
    torch.save(tiny_vit().state_dict(), good)
    bad = tmp_path / "bad.pth"
    torch.save(tiny_vit(64).state_dict(), bad)

    assert cli.main(["weights", "import", str(bad), "--model", "tiny_vfm"]) == 2
    err = capsys.readouterr().err
    assert "bad.pth" in err and "(1, 1, 64)" in err

    assert cli.main(["weights", "import", str(good), "--model", "tiny_vfm"]) == 0
    target = empty_cache / "vfm" / "tiny_vit_test.safetensors"
    assert target.is_file() and str(target) in capsys.readouterr().out
    assert cli.main(["weights", "import", str(good), "--model", "tiny_vfm"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["weights", "import", str(good), "--model", "tiny_vfm", "--overwrite"]) == 0

    assert cli.main(["weights", "list"]) == 0
    row = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("tiny_vfm")][0]
    assert " present " in row and str(target) in row

    assert cli.main(["weights", "download", "--model", "tiny_vfm"]) == 0  # already there: no network
    assert str(target) in capsys.readouterr().out
    assert cli.main(["weights", "download", "--model", "dino_vitb8"]) == 2  # offline
    err = capsys.readouterr().err
    assert "vit_base_patch8_224.dino.safetensors" in err and "--model dino_vitb8" in err
    assert cli.main(["weights", "download", "--model", "nonsense"]) == 2
    assert "Unknown model" in capsys.readouterr().err
