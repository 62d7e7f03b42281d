"""napari_cass.io for runners: images under a pixel limit, output plans, run folders."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from napari_cass.io import (
    DEFAULT_MAX_PIXELS,
    ImageTooLargeError,
    OutputConflictError,
    RunClasses,
    RunLock,
    check_output_folder,
    class_words,
    clean_temp_files,
    image_done,
    image_state,
    parse_pixel_count,
    plan_outputs,
    read_image,
    read_label_image,
    read_text_utf8,
    start_run,
    write_image_outputs,
)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A valid PNG signature and IHDR declaring width x height, with one tiny IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))


def test_decompression_bombs_are_refused_from_the_header(tmp_path: Path, monkeypatch) -> None:
    import tifffile

    monkeypatch.delenv("NAPARI_CASS_MAX_PIXELS", raising=False)
    png = tmp_path / "bomb.png"
    _png_header_only(png, 30000, 30000)  # 900 megapixels declared in 60 bytes
    assert png.stat().st_size < 100
    with pytest.raises(ImageTooLargeError, match=r"bomb.png is 30000 x 30000 pixels \(900.0 megapixels\)"):
        read_image(png)
    tif = tmp_path / "bomb.tif"
    tifffile.imwrite(tif, shape=(12000, 12000), dtype="uint8")  # sparse file, nothing decoded
    with pytest.raises(ImageTooLargeError, match="limit of 100 megapixels"):
        read_image(tif)
    assert 12000 * 12000 > DEFAULT_MAX_PIXELS > 6000 * 4000


def test_read_image_within_the_limit(tmp_path: Path, monkeypatch) -> None:
    import tifffile

    rgb = np.random.default_rng(0).integers(0, 255, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", max_pixels=120), rgb)
    with pytest.raises(ImageTooLargeError, match="--max-pixels 120"):
        read_image(tmp_path / "a.png", max_pixels=119)
    stack = np.zeros((5, 8, 9), dtype=np.uint16)  # five planes count: 360 pixels are decoded
    tifffile.imwrite(tmp_path / "s.tif", stack)
    assert read_image(tmp_path / "s.tif", max_pixels=360).shape == (5, 8, 9)
    with pytest.raises(ImageTooLargeError, match=r"9 x 8 pixels x 5 planes \(0.0 megapixels\)"):
        read_image(tmp_path / "s.tif", max_pixels=359)
    monkeypatch.setenv("NAPARI_CASS_MAX_PIXELS", "100")
    with pytest.raises(ImageTooLargeError):
        read_image(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png", max_pixels=0).shape == (12, 10, 3)  # 0: no limit
    with pytest.raises(ValueError, match="not an image file"):
        (tmp_path / "b.png").write_bytes(b"text")
        read_image(tmp_path / "b.png")


@pytest.mark.parametrize("text, value", [("250000000", 250_000_000), ("2.5e8", 250_000_000),
                                         ("250M", 250_000_000), ("1g", 1_000_000_000), ("0", None),
                                         ("none", None), (5000, 5000)])
def test_parse_pixel_count(text, value) -> None:
    assert parse_pixel_count(text) == value


def test_parse_pixel_count_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="not a pixel count"):
        parse_pixel_count("big")
    with pytest.raises(ValueError, match="positive"):
        parse_pixel_count("-5")


def test_read_text_utf8_names_a_latin1_file(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes("cat\ncafé\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"c.txt is not UTF-8 text \(byte 0xe9 on line 2\)"):
        read_text_utf8(path)
    path.write_bytes("\ufeffcafé\n".encode("utf-8"))  # Notepad's byte-order mark is dropped
    assert read_text_utf8(path) == "café\n"


def test_class_words_reads_cli_and_widget_tables_alike() -> None:
    cli_doc = {"has_background": False, "classes": [
        {"id": 0, "name": "background", "synonyms": []},
        {"id": 1, "name": "cat", "synonyms": ["cat", "kitten"]}]}
    widget_doc = {"classes": [
        {"id": 0, "name": "background", "synonyms": ["sky"]},
        {"id": 1, "name": "cat", "synonyms": ["kitten"]}]}
    assert class_words(cli_doc) == ([], [("cat", ["cat", "kitten"])])
    assert class_words(widget_doc) == (["sky"], [("cat", ["cat", "kitten"])])
    plain = {"classes": [{"id": 0, "name": "road", "synonyms": []}]}
    assert class_words(plain) == ([], [("road", ["road"])])


# ------------------------------------------------------------------ plans and run folders
def _prompt(name: str, *words: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, queries=(name, *words) if name != "background" else words)


def _image(path: Path, h: int = 10, w: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)


def test_plan_names_overlay_collisions_and_keeps_names_of_earlier_runs(tmp_path: Path) -> None:
    for name in ("x_overlay.png", "x.png", "x_overlay_overlay.png"):
        _image(tmp_path / "in" / name)
    plan = plan_outputs([tmp_path / "in" / "x_overlay.png", tmp_path / "in" / "x.png",
                         tmp_path / "in" / "x_overlay_overlay.png"], tmp_path / "out")
    names = [item.name for item in plan.images]
    assert names == ["x_overlay", "x_2", "x_overlay_overlay_2"]
    files = [p.name.casefold() for p in plan.output_paths()]
    assert len(set(files)) == len(files) == 6
    assert [item.renamed for item in plan.images] == [False, True, True]

    # An earlier run's names (classes.json "images") are kept even when new images sort first.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "classes.json").write_text(
        '{"images": {"x": "%s"}}' % (tmp_path / "in" / "x.png").resolve())
    again = plan_outputs([tmp_path / "in"], tmp_path / "out")
    assert {item.source.name: item.name for item in again.images}["x.png"] == "x"
    # Another image called x, elsewhere: "x" still belongs to in/x.png, which exists.
    _image(tmp_path / "other" / "x.png")
    elsewhere = plan_outputs([tmp_path / "other"], tmp_path / "out")
    assert [item.name for item in elsewhere.images] == ["x_2"]
    # Once in/x.png is gone (the folder moved), its name is free: a moved folder resumes by name.
    (tmp_path / "in" / "x.png").unlink()
    assert [item.name for item in plan_outputs([tmp_path / "other"], tmp_path / "out").images] == ["x"]


def test_run_folder_decisions(tmp_path: Path) -> None:
    for i in range(2):
        _image(tmp_path / "in" / f"i{i}.png", 10 + i, 12)
    plan = plan_outputs([tmp_path / "in"], tmp_path / "out")
    classes = RunClasses.from_prompts([_prompt("cat"), _prompt("dog", "puppy")])
    assert classes.names == ("background", "cat", "dog") and not classes.has_background
    settings = {"method": "cass"}
    with RunLock(plan.out_dir):
        with pytest.raises(OutputConflictError, match="Another napari-cass run"):
            RunLock(plan.out_dir).acquire()
        decision = check_output_folder(plan, classes, settings)
        assert decision.done == set() and decision.todo(plan) == list(plan.images)
        start_run(plan, classes, settings, decision)
        item = plan.images[0]
        labels = np.zeros((10, 12), np.int32)
        labels[:, 6:] = 1
        result = SimpleNamespace(mask=lambda: labels + 1,
                                 mask_classes=[SimpleNamespace(name=n) for n in classes.names])
        write_image_outputs(item, np.zeros((10, 12, 3), np.uint8), result, classes)
    assert image_done(item) and not image_done(plan.images[1])
    assert [image_state(i) for i in plan.images] == ["done", "missing"]
    np.testing.assert_array_equal(read_label_image(item.mask), labels + 1)
    assert check_output_folder(plan, classes, settings).done == {"i0"}
    assert check_output_folder(plan, classes, settings, overwrite=True).done == set()
    other = RunClasses.from_prompts([_prompt("car")])
    with pytest.raises(OutputConflictError, match=r"\[background; cat; dog \(dog, puppy\)\] there"):
        check_output_folder(plan, other, settings)
    assert check_output_folder(plan, other, settings, overwrite=True).remove == list(item.outputs)
    wrong = SimpleNamespace(mask=result.mask, mask_classes=[SimpleNamespace(name="background")])
    with pytest.raises(ValueError, match="not the run's classes"):
        write_image_outputs(plan.images[1], np.zeros((11, 12, 3), np.uint8), wrong, classes)
    assert not plan.images[1].mask.exists()
    write_image_outputs(plan.images[1], np.zeros((11, 12, 3), np.uint8),
                        SimpleNamespace(mask=lambda: np.ones((11, 12), np.int32), mask_classes=result.mask_classes),
                        classes)
    plan.images[1].overlay.unlink()  # a run stopped between mask and overlay: the mask is kept
    assert image_state(plan.images[1]) == "no_overlay"
    plan.images[1].overlay.write_bytes(b"")
    plan.images[1].mask.unlink()
    assert image_state(plan.images[1]) == "partial"  # only the overlay: redone
    plan.images[1].overlay.unlink()
    # The image changed after its result was written: the result may hold corrections.
    stamp = item.mask.stat().st_mtime_ns
    os.utime(item.source, ns=(stamp + 10**9, stamp + 10**9))
    assert image_state(item) == "stale"
    with pytest.raises(OutputConflictError, match=r"do not match their image any more.*i0.png"):
        check_output_folder(plan, classes, settings)
    assert check_output_folder(plan, classes, settings, overwrite=True).done == set()
    (plan.out_dir / ".i1.abcd1234.tmp.png").write_bytes(b"")
    (plan.out_dir / ".keep-me").write_bytes(b"")
    assert [p.name for p in clean_temp_files(plan.out_dir)] == [".i1.abcd1234.tmp.png"]
    assert (plan.out_dir / ".keep-me").exists()
