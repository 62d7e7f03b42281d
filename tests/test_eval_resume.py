"""Honest resume of ``napari-cass eval``: what a re-run may take from the cache, and what not.

A deterministic stand-in segmenter (label = red channel modulo the number of
classes) on 4 x 4 images makes every mIoU below a hand-computed fraction.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_cass.engine import ClassPrompt, SegmentationResult, normalize_classes
from napari_cass.evaluation import _cli, add_eval_parser, run_eval
from napari_cass.evaluation._cache import PerImageCache

# Hand-computed references (cell = class 0, debris = class 1; see _two_images):
# mask1 all debris:  cell IoU 16/24, debris 8/16              -> mIoU 7/12
# mask1 top debris:  cell IoU 20/28, debris 4/12              -> mIoU 11/21
# and img0 all red=1: cell IoU 4/28, debris 4/28              -> mIoU 1/7
MIOU_FIRST = 100 * 7 / 12
MIOU_CORRECTED = 100 * 11 / 21
MIOU_IMAGE_CHANGED = 100 * 1 / 7


class FakeSegmenter:
    """Deterministic stand-in: label = red channel modulo the number of classes."""

    device = "cpu"

    def __init__(self) -> None:
        self.calls = 0
        self.prompts: list[list[ClassPrompt]] = []

    def segment(self, image, classes, progress=None, cancel=None, *, background=None):
        self.calls += 1
        prompts = normalize_classes(classes)
        if background:
            prompts = [ClassPrompt(name="background", queries=tuple(background))] + prompts
        self.prompts.append(prompts)
        labels = (image[..., 0].astype(np.int32) % len(prompts)).astype(np.int32)
        probs = np.zeros((len(prompts), *labels.shape), np.float32)
        return SegmentationResult(labels=labels, probabilities=probs, classes=prompts,
                                  has_background=bool(background))


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> dict:
    seen: dict = {"builds": 0, "seg": FakeSegmenter()}

    def build(args: argparse.Namespace) -> FakeSegmenter:
        seen["builds"] += 1
        return seen["seg"]

    monkeypatch.setattr(_cli, "_build_segmenter", build)
    return seen


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="napari-cass")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _save_image(path: Path, red: np.ndarray) -> None:
    rgb = np.zeros((*red.shape, 3), np.uint8)
    rgb[..., 0] = red
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)  # PNG: lossless, the fake sees exactly these values


def _save_mask(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        import tifffile

        tifffile.imwrite(path, values.astype(np.uint16))
    else:
        Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def _classes_json(root: Path, classes: list[dict]) -> None:
    (root / "classes.json").write_text(json.dumps({"classes": classes}))


TWO_CLASSES = [{"id": 0, "name": "cell", "synonyms": []},
               {"id": 1, "name": "debris", "synonyms": ["particle"]}]


def _two_images(root: Path) -> None:
    """img0: red 0 (pred cell), mask all cell. img1: left half red 1 (pred debris),
    right half red 0 (pred cell); mask all debris."""
    _save_image(root / "images" / "img0.png", np.zeros((4, 4), np.uint8))
    red1 = np.zeros((4, 4), np.uint8)
    red1[:, :2] = 1
    _save_image(root / "images" / "img1.png", red1)
    _save_mask(root / "masks" / "img0.png", np.zeros((4, 4)))
    _save_mask(root / "masks" / "img1.png", np.ones((4, 4)))
    _classes_json(root, TWO_CLASSES)


def _argv(root: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--dataset", "folder", "--root", str(root), "--out", str(out),
            "--no-progress", "--worst", "0", *extra]


def _results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/results.json"))]


def _only_result(out: Path) -> dict:
    (res,) = _results(out)
    return res


def _rewrite_keeping_mtime(path: Path, values: np.ndarray) -> None:
    st = path.stat()
    _save_mask(path, values)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # only the content tells


def test_corrected_mask_is_rescored(tmp_path: Path, fake: dict) -> None:
    root, out = tmp_path / "data", tmp_path / "out"
    _two_images(root)
    assert run_eval(_parse(_argv(root, out))) == 0
    assert fake["seg"].calls == 2
    assert _only_result(out)["miou"] == pytest.approx(MIOU_FIRST, abs=1e-4)

    # The annotator corrects mask1 (top half debris, bottom half cell); same mtime.
    corrected = np.zeros((4, 4))
    corrected[:2] = 1
    _rewrite_keeping_mtime(root / "masks" / "img1.png", corrected)
    assert run_eval(_parse(_argv(root, out))) == 0
    assert fake["seg"].calls == 3  # img1 only
    res = _only_result(out)
    assert res["miou"] == pytest.approx(MIOU_CORRECTED, abs=1e-4)
    assert (res["num_images_new"], res["num_images_cached"], res["num_images_recomputed"]) == (1, 1, 1)
    run_dir = Path(res["run_dir"])
    assert len((run_dir / "per_image.jsonl").read_text().splitlines()) == 2  # superseded line gone

    # A touched image (new mtime, same bytes) stays cached; changed pixels are re-scored.
    img0 = root / "images" / "img0.png"
    os.utime(img0, ns=(img0.stat().st_atime_ns, img0.stat().st_mtime_ns + 10**9))
    assert run_eval(_parse(_argv(root, out))) == 0
    assert fake["seg"].calls == 3
    assert _only_result(out)["miou"] == pytest.approx(MIOU_CORRECTED, abs=1e-4)
    _save_image(img0, np.ones((4, 4), np.uint8))
    assert run_eval(_parse(_argv(root, out))) == 0
    assert fake["seg"].calls == 4
    assert _only_result(out)["miou"] == pytest.approx(MIOU_IMAGE_CHANGED, abs=1e-4)


def test_changed_words_and_class_count_start_a_new_run(tmp_path: Path, fake: dict) -> None:
    root, out = tmp_path / "data", tmp_path / "out"
    _two_images(root)
    assert run_eval(_parse(_argv(root, out))) == 0
    assert fake["seg"].calls == 2

    # Same count, other words: every image is segmented again with the new words.
    words = [dict(TWO_CLASSES[0]), {"id": 1, "name": "debris", "synonyms": ["dirt"]}]
    _classes_json(root, words)
    assert run_eval(_parse(_argv(root, out))) == 0
    assert fake["seg"].calls == 4 and fake["builds"] == 2
    assert fake["seg"].prompts[-1][1].queries == ("debris", "dirt")
    assert len(list(out.iterdir())) == 2
    assert all(r["miou"] == pytest.approx(MIOU_FIRST, abs=1e-4) for r in _results(out))

    # One class more: a new run folder, no shape error. "nucleus" is in neither the
    # masks nor the predictions (red % 3 gives the same labels), so it is left out of
    # the mean and the value is unchanged.
    _classes_json(root, words + [{"id": 2, "name": "nucleus", "synonyms": []}])
    assert run_eval(_parse(_argv(root, out))) == 0
    assert fake["seg"].calls == 6 and len(list(out.iterdir())) == 3
    three = [r for r in _results(out) if len(r["per_class"]) == 3]
    assert len(three) == 1 and three[0]["miou"] == pytest.approx(MIOU_FIRST, abs=1e-4)
    assert three[0]["per_class"][2]["iou"] is None


def test_same_stem_twice_is_refused(tmp_path: Path, fake: dict) -> None:
    root, out = tmp_path / "data", tmp_path / "out"
    _two_images(root)
    _save_image(root / "images" / "img1.jpg", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError) as err:
        run_eval(_parse(_argv(root, out)))
    msg = str(err.value)
    assert "images/img1.jpg and images/img1.png" in msg
    assert "rename or remove" in msg
    assert fake["builds"] == 0 and not out.exists()


def test_cached_record_is_counted_once(tmp_path: Path, fake: dict) -> None:
    root, out = tmp_path / "data", tmp_path / "out"
    _two_images(root)
    assert run_eval(_parse(_argv(root, out))) == 0
    jsonl = Path(_only_result(out)["run_dir"]) / "per_image.jsonl"
    lines = jsonl.read_text().splitlines()
    # img1's record twice more (as after a recomputation interrupted before the tidy-up)
    img1 = next(ln for ln in lines if json.loads(ln)["id"] == "img1")
    jsonl.write_text("\n".join(lines + [img1, img1]) + "\n")
    assert run_eval(_parse(_argv(root, out))) == 0
    res = _only_result(out)
    assert fake["seg"].calls == 2  # nothing recomputed
    assert res["num_images"] == 2 and res["num_images_cached"] == 2
    assert res["accumulator"]["num_images"] == 2
    assert res["miou"] == pytest.approx(MIOU_FIRST, abs=1e-4)
    assert sum(p["label_pixels"] for p in res["per_class"]) == 32  # 2 images x 16 pixels
    assert len(jsonl.read_text().splitlines()) == 2  # tidied


def test_cache_load_keeps_the_last_record_of_an_id(tmp_path: Path) -> None:
    cache = PerImageCache(tmp_path / "run", {"x": 1})
    cache.append({"id": "a", "v": 1})
    cache.append({"id": "b", "v": 2})
    cache.append({"id": "a", "v": 3})
    with open(cache.path, "a") as fh:
        fh.write('{"id": "b", "v"')  # torn last line
    records = cache.load()
    assert records == {"a": {"id": "a", "v": 3}, "b": {"id": "b", "v": 2}}
    assert cache.num_lines == 4
    with pytest.raises(ValueError, match="different run"):
        PerImageCache(tmp_path / "run", {"x": 2})


def test_tiff_class_255_is_a_class(tmp_path: Path, fake: dict) -> None:
    """300 classes: TIFF masks, where 255 is a class like any other.

    Image: top half red 255 (pred 255), bottom half red 7 (pred 7). Mask: top half 255,
    bottom-left 7, bottom-right 299. Class 255: IoU 8/8; class 7: 4/8; class 299: 0/4;
    mIoU (1 + 0.5 + 0) / 3 = 50 %.
    """
    root, out = tmp_path / "data", tmp_path / "out"
    red = np.full((4, 4), 7, np.uint8)
    red[:2] = 255
    _save_image(root / "images" / "a.png", red)
    mask = np.full((4, 4), 299)
    mask[:2] = 255
    mask[2:, :2] = 7
    _save_mask(root / "masks" / "a.tif", mask)
    _classes_json(root, [{"id": i, "name": f"c{i}", "synonyms": []} for i in range(300)])
    assert run_eval(_parse(_argv(root, out))) == 0
    res = _only_result(out)
    assert res["ignore_index"] == -1
    c255 = res["per_class"][255]
    assert (c255["label_pixels"], c255["pred_pixels"], c255["intersect"]) == (8, 8, 8)
    assert c255["iou"] == pytest.approx(100.0)
    assert res["per_class"][7]["iou"] == pytest.approx(50.0)
    assert res["per_class"][299]["iou"] == pytest.approx(0.0)
    assert res["miou"] == pytest.approx(50.0, abs=1e-4)
    assert res["pacc"] == pytest.approx(100 * 12 / 16, abs=1e-4)


def test_bad_masks_listed_before_models_load(tmp_path: Path, fake: dict, capsys) -> None:
    root, out = tmp_path / "data", tmp_path / "out"
    _two_images(root)
    for stem in ("small", "garbage", "values", "colour"):
        _save_image(root / "images" / f"{stem}.png", np.zeros((4, 4), np.uint8))
    _save_mask(root / "masks" / "small.png", np.zeros((3, 4)))
    (root / "masks" / "garbage.png").write_bytes(b"\x89PNG this is not a png")
    values = np.zeros((4, 4))
    values[0, :3] = 5
    _save_mask(root / "masks" / "values.png", values)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "masks" / "colour.png")

    with pytest.raises(ValueError) as err:
        run_eval(_parse(_argv(root, out)))
    msg = str(err.value)
    assert fake["builds"] == 0 and not out.exists()
    assert msg.startswith("4 of 6 image(s) cannot be scored (found before loading any model)")
    assert "masks/small.png: mask is 4x3 but its image images/small.png is 4x4" in msg
    assert "masks/garbage.png: mask unreadable" in msg
    assert "masks/values.png: mask has value(s) 5 in 3 pixel(s)" in msg
    assert "masks/colour.png: mask is a RGB image" in msg
    assert "--skip-bad" in msg

    assert run_eval(_parse(_argv(root, out, "--skip-bad"))) == 0
    assert fake["builds"] == 1 and fake["seg"].calls == 2
    res = _only_result(out)
    assert res["num_images"] == 2 and res["num_images_skipped"] == 4
    assert sorted(s["file"] for s in res["skipped"]) == [
        "masks/colour.png", "masks/garbage.png", "masks/small.png", "masks/values.png"]
    assert res["miou"] == pytest.approx(MIOU_FIRST, abs=1e-4)
    assert "Skipped 4 image(s)" in (Path(res["run_dir"]) / "results.md").read_text()
    assert "4 image(s) skipped" in capsys.readouterr().err


def test_value_255_in_png_masks_is_ignored_not_bad(tmp_path: Path, fake: dict) -> None:
    """PNG masks: 255 = ignore. Masking img1's left half out leaves img1's right half
    (pred cell, gt debris): cell IoU 16/24, debris 0/8 -> mIoU 1/3."""
    root, out = tmp_path / "data", tmp_path / "out"
    _two_images(root)
    mask = np.ones((4, 4))
    mask[:, :2] = 255
    _save_mask(root / "masks" / "img1.png", mask)
    assert run_eval(_parse(_argv(root, out))) == 0
    res = _only_result(out)
    assert res["ignore_index"] == 255 and res["num_images_skipped"] == 0
    assert res["miou"] == pytest.approx(100 / 3, abs=1e-4)


def test_image_broken_past_its_header_stops_with_cache_kept(tmp_path: Path, fake: dict) -> None:
    """The pre-scan reads headers only: a truncated image is found when it is loaded.
    The images before it stay cached, and --skip-bad goes on without it."""
    root, out = tmp_path / "data", tmp_path / "out"
    _two_images(root)
    _save_image(root / "images" / "trunc.png", np.arange(16, dtype=np.uint8).reshape(4, 4))
    _save_mask(root / "masks" / "trunc.png", np.zeros((4, 4)))
    data = (root / "images" / "trunc.png").read_bytes()
    (root / "images" / "trunc.png").write_bytes(data[: len(data) - 30])
    with pytest.raises(ValueError) as err:
        run_eval(_parse(_argv(root, out)))
    assert "images/trunc.png" in str(err.value) and "--skip-bad" in str(err.value)
    assert fake["seg"].calls == 2
    (run_dir,) = out.iterdir()
    assert len((run_dir / "per_image.jsonl").read_text().splitlines()) == 2
    assert run_eval(_parse(_argv(root, out, "--skip-bad"))) == 0
    res = _only_result(out)
    assert fake["seg"].calls == 2 and res["num_images_cached"] == 2
    assert [s["file"] for s in res["skipped"]] == ["images/trunc.png"]
    assert res["miou"] == pytest.approx(MIOU_FIRST, abs=1e-4)
