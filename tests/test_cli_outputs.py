"""``napari-cass segment`` output folders: never lost, never mixed (issue 8), class files (issue 9).

In-process runs with tiny random-weight models (the masks are meaningless; what is checked
is which files exist, what they hold, and when the models are built).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_cass import cli
from napari_cass.cli import _segment as segment_command
from napari_cass.io import read_classes_json, read_label_image


@pytest.fixture(scope="module")
def tiny() -> tuple:
    from napari_cass.engine.testing import tiny_models

    return tiny_models()


class Recorder:
    """Builds tiny-model segmenters; counts builds and segmented images; can stop a run."""

    def __init__(self, tiny: tuple):
        self.tiny = tiny
        self.builds = 0
        self.segmented: list[tuple[int, int]] = []
        self.interrupt_at: int | None = None

    def __call__(self, args):
        from napari_cass.engine import Segmenter

        self.builds += 1
        seg = Segmenter.from_models(*self.tiny, method=args.method, preset=args.preset, device="cpu")
        inner = seg.segment

        def segment(image, classes, **kwargs):
            if self.interrupt_at is not None and len(self.segmented) == self.interrupt_at:
                raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
            self.segmented.append(np.shape(image)[:2])
            return inner(image, classes, **kwargs)

        seg.segment = segment
        return seg


@pytest.fixture()
def models(tiny: tuple, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder(tiny)
    monkeypatch.setattr(segment_command, "build_segmenter", recorder)
    return recorder


def _image(path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _visible(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_colliding_and_unicode_names_get_distinct_outputs(tmp_path, models, capsys) -> None:
    names = {"x.png": (20, 24), "x_overlay.png": (22, 26), "a.png": (24, 28), "a.jpg": (26, 30),
             "café.png": (28, 32), "猫.png": (30, 34), "東京.png": (32, 36), "Café.png": (34, 38)}
    for i, (name, (h, w)) in enumerate(names.items()):
        _image(tmp_path / "in" / name, h, w, seed=i)
    out = tmp_path / "out"
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    doc = read_classes_json(out / "classes.json")
    sources = {name: (tmp_path / "in" / file).resolve() for name, file in [
        ("a", "a.jpg"), ("a_2", "a.png"), ("Café", "Café.png"), ("café_2", "café.png"),
        ("x", "x.png"), ("x_overlay_2", "x_overlay.png"), ("猫", "猫.png"), ("東京", "東京.png")]}
    assert doc["images"] == {k: f"../in/{v.name}" for k, v in sources.items()}  # relative to out
    assert len(_visible(out)) == 1 + 2 * len(names)  # classes.json + mask and overlay of each
    for name, src in sources.items():
        h, w = names[src.name]
        assert read_label_image(out / f"{name}.png").shape == (h, w)  # each mask is its own image's
        with Image.open(out / f"{name}_overlay.png") as overlay:
            assert overlay.mode == "RGB" and overlay.size == (w, h)
    assert f"{sources['x_overlay_2']} is written as x_overlay_2.png" in err
    assert f"{sources['a_2']} is written as a_2.png" in err
    assert len(models.segmented) == len(names)
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(out)]) == 0
    captured = capsys.readouterr()  # a re-run finds every name on record: no notes, nothing to do
    assert "already segmented" in captured.out and "is written as" not in captured.err


@pytest.mark.parametrize("kind", ["under a file", "unwritable"])
def test_bad_output_folders_are_refused_before_the_models_load(tmp_path, models, capsys, kind) -> None:
    _image(tmp_path / "in" / "x.png", 20, 20, seed=0)
    if kind == "under a file":
        (tmp_path / "file.txt").write_text("a regular file")
        out, expected = tmp_path / "file.txt" / "sub" / "out", f"is under {tmp_path / 'file.txt'}"
    else:  # sysfs refuses new files even to root, so this holds on any Linux machine
        out, expected = "/sys/napari-cass-out", "Cannot write the output folder /sys/napari-cass-out"
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "probe" not in err
    assert models.builds == 0


def test_interrupted_run_leaves_a_consistent_folder_and_resumes(tmp_path, models, capsys) -> None:
    for i in range(4):
        _image(tmp_path / "in" / f"img{i}.png", 20 + i, 24, seed=i)
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "in"), "--classes", "cat, dog", "--out", str(out)]
    models.interrupt_at = 2
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted: 2 of 4 image(s) are done" in err and "run the same command again" in err
    assert _visible(out) == ["classes.json", "img0.png", "img0_overlay.png", "img1.png",
                             "img1_overlay.png"]
    assert [c["name"] for c in read_classes_json(out / "classes.json")["classes"]] == [
        "background", "cat", "dog"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.startswith("img")}
    # A killed writer leaves a temporary file (atomic_write's naming); the next run removes it.
    (out / ".img2.k3j4h5g6.tmp.png").write_bytes(b"half a png")

    models.interrupt_at = None
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "removed 1 temporary file" in captured.err and "resuming: 2 of 4" in captured.err
    assert "Segmented 2 of 2 image(s)" in captured.out and "2 more were already done" in captured.out
    assert models.segmented[2:] == [(22, 24), (23, 24)]  # only the two missing images
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in stamps} == stamps
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert len(_visible(out)) == 9


def test_another_class_list_never_mixes_with_old_masks(tmp_path, models, capsys) -> None:
    for i in range(2):
        _image(tmp_path / "in" / f"img{i}.png", 20, 24, seed=i)
    out = tmp_path / "out"
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat, dog, bird", "--out", str(out)]) == 0
    capsys.readouterr()
    builds = models.builds
    one = str(tmp_path / "in" / "img0.png")

    # Another class list without --overwrite: refused, naming both lists.
    assert cli.main(["segment", one, "--classes", "car", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "made differently" in err and "cat" in err and "car" in err and "--overwrite" in err
    # With --overwrite on part of the folder: img1.png would stay beside a table of other classes.
    assert cli.main(["segment", one, "--classes", "car", "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "img1.png" in err and "img1_overlay.png" in err and "described by the new classes" in err
    # Other settings count too.
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat, dog, bird", "--method", "clip",
                     "--out", str(out)]) == 2
    assert "method 'cass' there, 'clip' in this run" in capsys.readouterr().err
    assert models.builds == builds  # every refusal came before the models
    assert max(read_label_image(out / f"img{i}.png").max() for i in range(2)) <= 3

    # The whole folder with --overwrite: rewritten consistently.
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "car", "--out", str(out),
                     "--overwrite"]) == 0
    assert [c["name"] for c in read_classes_json(out / "classes.json")["classes"]] == ["background", "car"]
    for i in range(2):
        assert read_label_image(out / f"img{i}.png").max() == 1  # one class: every pixel is value 1


def test_pixel_limit_refuses_before_decoding(tmp_path, models, capsys, monkeypatch) -> None:
    _image(tmp_path / "in" / "big.png", 40, 50, seed=0)  # 2000 pixels
    _image(tmp_path / "in" / "small.png", 20, 25, seed=1)  # 500 pixels
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(out)]
    assert cli.main([*argv, "--max-pixels", "1000"]) == 1
    err = capsys.readouterr().err
    assert "big.png is 50 x 40 pixels" in err and "limit of 0.001 megapixels" in err
    assert "--max-pixels 2000" in err and "NAPARI_CASS_MAX_PIXELS" in err
    assert models.segmented == [(20, 25)]
    monkeypatch.setenv("NAPARI_CASS_MAX_PIXELS", "1500")  # the environment variable, same rule
    assert cli.main(argv) == 1 and "above the limit of 0.0015 megapixels" in capsys.readouterr().err
    monkeypatch.setenv("NAPARI_CASS_MAX_PIXELS", "2k")  # raised: the big image goes through
    assert cli.main(argv) == 0
    assert models.segmented[-1] == (40, 50)
    assert cli.main([*argv, "--max-pixels", "lots"]) == 2
    assert "--max-pixels: 'lots' is not a pixel count" in capsys.readouterr().err


def test_class_file_in_another_encoding_names_the_file(tmp_path, models, capsys) -> None:
    _image(tmp_path / "in" / "x.png", 20, 20, seed=0)
    latin1 = tmp_path / "classes.txt"
    latin1.write_bytes("café\nthé\n".encode("latin-1"))
    rc = cli.main(["segment", str(tmp_path / "in"), "--classes-file", str(latin1), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and str(latin1) in err and "not UTF-8" in err and "Save it as UTF-8" in err
    assert models.builds == 0


def test_background_word_that_is_a_class_is_an_error(tmp_path, models, capsys) -> None:
    _image(tmp_path / "in" / "x.png", 20, 20, seed=0)
    rc = cli.main(["segment", str(tmp_path / "in"), "--classes", "cat, dog", "--background", "sky, Dog",
                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "background word 'Dog' is also the class 'dog'" in err
    assert "Remove 'Dog' from the background words" in err and models.builds == 0


@pytest.mark.parametrize("background", [None, "sky, wall"])
def test_classes_json_of_a_run_segments_the_same_when_reused(tmp_path, models, capsys, background) -> None:
    for i in range(2):
        _image(tmp_path / "in" / f"img{i}.png", 30, 34, seed=i)
    extra = ["--background", background] if background else []
    first = tmp_path / "first"
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat | kitten, dog, grass", *extra,
                     "--method", "clip", "--out", str(first)]) == 0
    second = tmp_path / "second"
    assert cli.main(["segment", str(tmp_path / "in"), "--classes-file", str(first / "classes.json"),
                     "--method", "clip", "--out", str(second)]) == 0
    doc1, doc2 = read_classes_json(first / "classes.json"), read_classes_json(second / "classes.json")
    assert doc2["classes"] == doc1["classes"] and doc2["has_background"] == doc1["has_background"]
    for i in range(2):
        np.testing.assert_array_equal(read_label_image(second / f"img{i}.png"),
                                      read_label_image(first / f"img{i}.png"))
    # The same table into the first folder: recognised as the same classes, nothing to redo.
    assert cli.main(["segment", str(tmp_path / "in"), "--classes-file", str(first / "classes.json"),
                     "--method", "clip", "--out", str(first)]) == 0
    assert "already segmented" in capsys.readouterr().out
    if background:  # words in the file and on the command line: ambiguous, refused
        assert cli.main(["segment", str(tmp_path / "in"), "--classes-file", str(first / "classes.json"),
                         "--background", "sea", "--out", str(tmp_path / "third")]) == 2
        assert "--background was given too" in capsys.readouterr().err
