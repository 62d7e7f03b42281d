"""Review regressions for run folders: what ``classes.json`` records, and when a run resumes.

Tiny random-weight models (``napari_cass.engine.testing``): the masks are meaningless,
the tests check which files are written, what is recorded, and what is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_cass import cli
from napari_cass.io import plan_outputs, read_classes_json


def _images(folder: Path, names=("street", "grey")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 255, (30 + 2 * i, 34, 3), dtype=np.uint8)).save(folder / f"{name}.png")


# ------------------------------------------------------------------ sources in classes.json
def test_classes_json_records_sources_relative_to_the_output_folder(tmp_path, cli_builds, monkeypatch, capsys):
    """No absolute path of the user's disk in a folder that gets shared; moved folders resume."""
    project = tmp_path / "project"
    _images(project / "photos")
    monkeypatch.chdir(project)  # relative arguments, as typed in a shell
    assert cli.main(["segment", "photos", "--classes", "cat", "--out", "masks"]) == 0
    text = (project / "masks" / "classes.json").read_text(encoding="utf-8")
    assert str(tmp_path) not in text
    assert json.loads(text)["images"] == {"grey": "../photos/grey.png", "street": "../photos/street.png"}
    assert len(cli_builds) == 1

    # The project moves (another disk, another user's copy); run from elsewhere: all done.
    moved = tmp_path / "elsewhere" / "copy"
    moved.parent.mkdir()
    shutil.move(str(project), str(moved))  # keeps modification times, as mv does
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["segment", str(moved / "photos"), "--classes", "cat", "--out", str(moved / "masks")]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len(cli_builds) == 1  # no models loaded: nothing was redone

    # A new image in the moved folder: resumed, the table still relative.
    _images(moved / "photos", names=("new",))
    assert cli.main(["segment", str(moved / "photos"), "--classes", "cat", "--out", str(moved / "masks")]) == 0
    doc = read_classes_json(moved / "masks" / "classes.json")
    assert doc["images"] == {"grey": "../photos/grey.png", "new": "../photos/new.png",
                             "street": "../photos/street.png"}
    assert len(cli_builds) == 2


def test_absolute_sources_of_older_tables_still_keep_their_names(tmp_path, cli_builds):
    """A classes.json written with absolute paths (earlier versions) is read as before."""
    _images(tmp_path / "in", names=("a",))
    out = tmp_path / "out"
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(out)]) == 0
    doc = json.loads((out / "classes.json").read_text(encoding="utf-8"))
    # An older run named image "a" "special" and recorded its absolute path.
    for suffix in (".png", "_overlay.png"):
        (out / f"a{suffix}").rename(out / f"special{suffix}")
    doc["images"] = {"special": str((tmp_path / "in" / "a.png").resolve())}
    (out / "classes.json").write_text(json.dumps(doc), encoding="utf-8")
    _images(tmp_path / "in", names=("b",))
    plan = plan_outputs([str(tmp_path / "in")], out)
    assert [item.name for item in plan.images] == ["special", "b"]
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(out)]) == 0
    assert len(cli_builds) == 2 and not (out / "a.png").exists()  # "a" resumed as "special", only "b" done
    assert read_classes_json(out / "classes.json")["images"] == {"b": "../in/b.png", "special": "../in/a.png"}


# ------------------------------------------------------------------ --server runs and resume
SERVER_MODELS = {"clip": "ViT-B-16", "clip_weights": "openai", "vfm": "dino_vitb8"}


def test_server_runs_record_the_servers_models_and_resume_only_with_them(tmp_path, tiny_model_set, capsys):
    """A folder made on a server is never continued with other models (server or local)."""
    from napari_cass.engine import Segmenter
    from napari_cass.server import BackgroundServer, create_app

    _images(tmp_path / "in", names=("a",))
    out = tmp_path / "out"
    seg = Segmenter.from_models(*tiny_model_set, device="cpu")
    seg.model_names = dict(SERVER_MODELS)
    with BackgroundServer(create_app(seg)) as server:
        argv = ["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(out), "--server", server.url]
        assert cli.main(argv) == 0
        doc = read_classes_json(out / "classes.json")
        assert doc["run"] == {"method": "cass", "preset": "interactive", "clip": "ViT-B-16",
                              "vfm": "dino_vitb8", "random_weights": False}
        assert doc["models"] == SERVER_MODELS and doc["server"] == server.url
        assert doc["random_weights"] is False

        # The same server, one more image: resumed (only the new image segmented).
        _images(tmp_path / "in", names=("b",))
        before = (out / "a.png").stat().st_mtime_ns
        assert cli.main(argv) == 0
        assert (out / "b.png").is_file() and (out / "a.png").stat().st_mtime_ns == before
        assert "resuming: 1 of 2" in capsys.readouterr().err

        # The server restarted with random weights: its masks would not be the folder's.
        seg.model_names = {**SERVER_MODELS, "clip_weights": "random"}
        _images(tmp_path / "in", names=("c",))
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "random_weights False there, True in this run" in err and "--overwrite" in err
        assert not (out / "c.png").exists()

        # The server's models were never recorded by older tables: not trusted either.
        seg.model_names = dict(SERVER_MODELS)
        legacy = json.loads((out / "classes.json").read_text(encoding="utf-8"))
        legacy["run"] = {"method": "cass", "preset": "interactive", "server": server.url}
        (out / "classes.json").write_text(json.dumps(legacy), encoding="utf-8")
        assert cli.main(argv) == 2
        assert "clip not recorded there, 'ViT-B-16' in this run" in capsys.readouterr().err


def test_a_local_run_does_not_continue_a_server_folder_with_other_models(tmp_path, cli_builds, capsys):
    """A folder a server made: resumed locally only with the models it records."""
    from napari_cass.engine import normalize_classes
    from napari_cass.io import RunClasses, check_output_folder, start_run

    _images(tmp_path / "in", names=("a", "b"))
    out = tmp_path / "out"
    out.mkdir()
    plan = plan_outputs([str(tmp_path / "in")], out)
    classes = RunClasses.from_prompts(normalize_classes("cat"))
    argv = ["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(out)]
    # Earlier --server runs recorded only method, preset and the URL: which models is unknown.
    legacy = {"method": "cass", "preset": "interactive", "server": "http://gpu-box:8765"}
    start_run(plan, classes, legacy, check_output_folder(plan, classes, legacy))
    for extra in (["--random-weights"], []):
        assert cli.main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert "clip not recorded there" in err and "server 'http://gpu-box:8765' there" in err
    assert cli_builds == []  # refused before any model loads
    # A server run that recorded its models (pretrained weights).
    server = {"method": "cass", "preset": "interactive", "clip": "ViT-B-16", "vfm": "dino_vitb8",
              "random_weights": False}
    start_run(plan, classes, server, check_output_folder(plan, classes, server, overwrite=True))
    assert cli.main([*argv, "--random-weights"]) == 2
    assert "random_weights False there, True in this run" in capsys.readouterr().err
    assert cli_builds == []
    assert cli.main(argv) == 0  # the same models locally: that folder resumes
    assert len(cli_builds) == 1


# ------------------------------------------------------------------ names at the length limit
@pytest.mark.parametrize("letter", ["x", "猫"])
def test_names_at_the_length_limit_get_a_suffix_that_survives(tmp_path, letter):
    """Image "L" and image "L_overlay..." cut to "L_overlay" (L near the limit) used to hang the plan."""
    import threading

    from napari_cass.io import safe_filename

    # The base whose "_overlay" variant sits exactly at the length limit (chars or UTF-8 bytes).
    base = next(letter * k for k in range(300, 0, -1)
                if safe_filename(letter * k + "_overlay" + letter * 3) == letter * k + "_overlay")
    folder = tmp_path / "in"
    folder.mkdir()
    for stem in (base, base + "_overlay" + letter * 3):
        Image.new("RGB", (8, 8)).save(folder / f"{stem}.png")
    plans: list = []
    worker = threading.Thread(target=lambda: plans.append(plan_outputs([str(folder)], tmp_path / "out")),
                              daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert plans, "plan_outputs did not finish"
    names = [item.name for item in plans[0].images]
    files = {n.casefold() for name in names for n in (name, name + "_overlay")}
    assert len(files) == 4  # two masks, two overlays, all different
    assert names[0] == base and names[1].endswith("_2") and names[1] == safe_filename(names[1])
    assert all(len((name + "_overlay.png").encode()) <= 255 for name in names)


def test_collision_suffixes_keep_names_within_the_limit():
    """``unique_filenames`` on names at the limit: distinct, each still a safe (resumable) name."""
    from napari_cass.io import safe_filename
    from napari_cass.io._names import unique_filenames

    for letter in ("x", "猫"):
        long = letter * 300
        names = unique_filenames([long, long.upper(), long + "y"])
        assert len({n.casefold() for n in names}) == 3
        assert all(safe_filename(n) == n for n in names)  # what _previous_names accepts on resume


def test_an_output_folder_above_the_input_folder_is_not_taken_for_masks(tmp_path, cli_builds, monkeypatch):
    """``segment photos --out .`` used to skip every image ("No images in folder photos")."""
    _images(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["segment", "photos", "--classes", "cat", "--out", "."]) == 0
    assert (tmp_path / "grey.png").is_file() and (tmp_path / "street_overlay.png").is_file()
    assert read_classes_json(tmp_path / "classes.json")["images"] == {"grey": "photos/grey.png",
                                                                     "street": "photos/street.png"}
    # The output folder inside the input folder is still skipped on a recursive run.
    argv = ["segment", "photos", "--recursive", "--classes", "cat", "--out", "photos/masks"]
    assert cli.main(argv) == 0
    assert sorted(read_classes_json(tmp_path / "photos" / "masks" / "classes.json")["images"]) == [
        "grey", "street"]
    assert cli.main(argv) == 0
    assert len(cli_builds) == 2  # the second recursive run found its masks done, not new images


# ------------------------------------------------------------------ the client's token
@pytest.mark.parametrize("backend", ["urllib", "httpx"])
def test_the_client_never_follows_a_redirect_with_its_token(backend):
    """A server URL that redirects elsewhere must not hand the bearer token to the other host."""
    import http.server
    import threading

    from napari_cass.server import RemoteSegmenter, RemoteSegmenterError

    seen: list = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # http.server's name
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"models": {}, "version": "x"}')

        def log_message(self, *args):
            pass

    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    target = f"http://127.0.0.1:{collector.server_address[1]}"

    class Redirector(Collector):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", target + self.path)
            self.end_headers()

    redirector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (collector, redirector)]
    for t in threads:
        t.start()
    try:
        remote = RemoteSegmenter(f"http://127.0.0.1:{redirector.server_address[1]}", "s3cret-token-0123456789",
                                 backend=backend, connect_timeout=2)
        with pytest.raises(RemoteSegmenterError, match="HTTP 302"):
            remote.server_info()
        remote.close()
        assert seen == []  # the other host was never asked, let alone given the token
    finally:
        for s in (collector, redirector):
            s.shutdown()
            s.server_close()


def test_server_url_recorded_without_credentials():
    """classes.json travels with the masks: a user:password@ in the server URL stays out of it."""
    import argparse
    from types import SimpleNamespace

    from napari_cass.cli._segment import run_description

    remote = SimpleNamespace(method="cass", preset=SimpleNamespace(name="interactive"),
                             model_names=dict(SERVER_MODELS), url="http://ann:pw0rd@gpu-box:8765")
    args = argparse.Namespace(server=remote.url, random_weights=True)
    description = run_description(args, remote)
    assert description["server"] == "http://gpu-box:8765"
    assert "pw0rd" not in json.dumps(description)
    assert description["random_weights"] is False  # the server's weights, not the ignored flag


# ------------------------------------------------------------------ corrected masks are kept
def test_a_corrected_mask_whose_overlay_was_deleted_is_kept(tmp_path, cli_builds, capsys):
    """Re-running used to re-segment such an image and overwrite the annotator's mask."""
    from napari_cass.io import RunClasses, read_label_image, write_indexed_png

    _images(tmp_path / "in", names=("a", "b"))
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "in"), "--classes", "cat, dog", "--out", str(out)]
    assert cli.main(argv) == 0
    corrected = np.zeros((30, 34), np.uint8)
    corrected[:, :10], corrected[:5] = 2, 255  # "dog", and a strip marked "ignore"
    colours = RunClasses(("background", "cat", "dog"), ((), ("cat",), ("dog",)), False).colors
    write_indexed_png(out / "a.png", corrected, colours, overwrite=True)  # saved after the run
    (out / "a_overlay.png").unlink()  # the quick look deleted
    (out / "b_overlay.png").unlink()
    capsys.readouterr()
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "drew 2 missing overlay(s)" in err and "nothing to do" not in err
    assert len(cli_builds) == 1  # no image segmented again
    np.testing.assert_array_equal(read_label_image(out / "a.png"), corrected)
    with Image.open(out / "a_overlay.png") as overlay:
        drawn = np.asarray(overlay.convert("RGB"))
    assert drawn.shape == (30, 34, 3)
    source = np.asarray(Image.open(tmp_path / "in" / "a.png").convert("RGB")).astype(float)
    blended = 0.5 * source[10, 2] + 0.5 * colours[2]  # the corrected class, half over the image
    assert np.abs(drawn[10, 2] - blended).max() <= 1.0  # rounding of a uint8 blend
    assert tuple(drawn[2, 20]) == tuple(source[2, 20])  # 255 ("ignore") left uncoloured
    assert tuple(drawn[10, 20]) == tuple(source[10, 20])  # background uncoloured
    assert (out / "b_overlay.png").is_file()


def test_an_output_never_replaces_an_input_image(tmp_path, cli_builds, monkeypatch, capsys):
    """``segment a.png --out . --overwrite`` in the images' folder replaced the photo by its mask."""
    _images(tmp_path / "photos", names=("a", "b"))
    before = (tmp_path / "photos" / "a.png").read_bytes()
    monkeypatch.chdir(tmp_path / "photos")
    for extra in ([], ["--overwrite"]):
        assert cli.main(["segment", "a.png", "b.png", "--classes", "cat", "--out", ".", *extra]) == 2
        err = capsys.readouterr().err
        assert "would replace the input image" in err and "another output folder" in err
    assert (tmp_path / "photos" / "a.png").read_bytes() == before
    assert cli_builds == [] and sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["a.png", "b.png"]
