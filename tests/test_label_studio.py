"""Label Studio: the ML backend on ``napari-cass serve``, the brush RLE codec, ``napari-cass convert``.

Tiny random-weight models: the masks are meaningless; every mask Label Studio would
store is decoded and compared with the CLI's mask for the same image and classes.
The requests are in the exact shape Label Studio 1.23 sends (recorded from it: setup
with ``project/schema/hostname/access_token/extra_params``, predict with serialized
tasks, ``label_config`` and ``params``, Basic auth). ``test_real_label_studio`` runs
a real Label Studio (set ``NAPARI_CASS_LABEL_STUDIO`` to its ``label-studio``
executable; ``.ci/run`` installs it in a venv of its own, since it pins numpy < 2.3).
Only loopback addresses are ever contacted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from _label_studio_support import (CLASSES, CONFIG, LS_TOKEN, SERVER_TOKEN, FakeLabelStudioFiles, assert_same_as_cli,
                                   basic, cli_masks, decoded, real_images)
from napari_cass.integrations import LabelConfigError, RLEError, brush_target, encode_rle, mask_from_rle
from napari_cass.integrations.label_studio import label_studio_from_args
from napari_cass.server import BackgroundServer, create_app


def _segmenter(tiny_model_set):
    """The engine the CLI's tests build (cli_builds): same models, method and preset."""
    from napari_cass.engine import Segmenter

    return Segmenter.from_models(*tiny_model_set, method="cass", preset="interactive", device="cpu")


def _backend(url: str, tmp_path: Path, background=None, allow=(), **limits):
    token_file = tmp_path / "ls-token"
    token_file.write_text(LS_TOKEN + "\n")
    token_file.chmod(0o600)
    args = argparse.Namespace(label_studio=url, label_studio_token_file=token_file,
                              label_studio_background=background, label_studio_allow_host=list(allow))
    backend = label_studio_from_args(args)
    for key, value in limits.items():
        setattr(backend.fetcher, key, value)
    return backend


def _task(tid: int, name: str) -> dict:
    """A task as Label Studio serializes it for /predict (fields recorded from 1.23.2)."""
    return {"id": tid, "data": {"image": f"/data/upload/1/{name}"}, "meta": {}, "created_at": "2026-12-03T13:35:22Z",
            "updated_at": "2026-12-03T13:35:22Z", "is_labeled": False, "overlap": 1, "inner_id": tid,
            "total_annotations": 0, "cancelled_annotations": 0, "total_predictions": 0, "comment_count": 0,
            "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": 1, "updated_by": None,
            "file_upload": tid, "comment_authors": [], "annotations": [], "predictions": []}


def _predict_body(tasks, config=CONFIG) -> dict:
    return {"tasks": tasks, "project": "1.1796304610", "label_config": config,
            "params": {"login": None, "password": None, "context": None}}


@pytest.fixture
def stack(tmp_path, tiny_model_set):
    """Images, a stand-in Label Studio serving them, and napari-cass serve (with a token) in front."""
    images = real_images(tmp_path / "images")
    files = FakeLabelStudioFiles({f"1a2b3c4d-{p.name}": p for p in images.values()})
    with BackgroundServer(files.app) as ls:
        def serve(**kwargs):
            backend = _backend(ls.url, tmp_path, **kwargs)
            app = create_app(_segmenter(tiny_model_set), token=SERVER_TOKEN)
            backend.mount(app, SERVER_TOKEN)
            return BackgroundServer(app)

        yield {"images": images, "files": files, "ls": ls, "serve": serve, "tmp": tmp_path}


def test_predict_returns_the_cli_masks_as_brushlabels(stack, cli_builds):
    ref = cli_masks(stack["images"]["astronaut"].parent, stack["tmp"] / "cli")
    auth = {"Authorization": basic("label-studio", SERVER_TOKEN)}
    with stack["serve"]() as server:
        assert httpx.get(server.url + "/health").status_code == 200  # Label Studio needs a 200 JSON reply
        setup = {"project": "1.1796304610", "schema": CONFIG, "hostname": "http://localhost:8080",
                 "access_token": "not-used-by-napari-cass", "extra_params": None}
        r = httpx.post(server.url + "/setup", json=setup, headers=auth)
        assert r.status_code == 200, r.text
        version = r.json()["model_version"]
        assert version.startswith("napari-cass-") and "cass/interactive" in version and "labels-" in version
        tasks = [_task(7, "1a2b3c4d-astronaut.png"), _task(8, "1a2b3c4d-coffee.png")]
        r = httpx.post(server.url + "/predict", json=_predict_body(tasks), headers=auth, timeout=120)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        # a webhook event (Label Studio sends them without credentials) is accepted and ignored
        assert httpx.post(server.url + "/webhook", json={"action": "TASKS_CREATED"}).status_code == 200
    assert len(results) == 2
    for pred, stem in zip(results, ("astronaut", "coffee")):
        assert pred["model_version"] == version
        items = pred["result"]
        assert items and {(i["from_name"], i["to_name"]) for i in items} == {("tag", "image")}
        assert {(i["original_width"], i["original_height"]) for i in items} == {ref["masks"][stem].shape[::-1]}
        assert_same_as_cli(items, ref["masks"][stem], ref["names"])
        assert all(0 < i["score"] <= 1 for i in items) and 0 < pred["score"] <= 1
    # the token went to Label Studio's own host with each image request
    assert [h.get("authorization") for _, h in stack["files"].seen] == [f"Token {LS_TOKEN}"] * 2


def test_labels_edited_in_label_studio_are_used_without_restart(stack, cli_builds):
    """A label added (with synonyms) and background words: new model version, the CLI's masks."""
    config = CONFIG.replace('<Label value="grass"/>', '<Label value="grass"/><Label value="road" prompts="road, street"/>')
    one = stack["tmp"] / "one"
    one.mkdir()
    (one / "coffee.png").write_bytes(stack["images"]["coffee"].read_bytes())
    ref = cli_masks(one, stack["tmp"] / "cli", classes=CLASSES + ", road | street", background="wall, floor")
    auth = {"Authorization": f"Bearer {SERVER_TOKEN}"}
    with stack["serve"](background="wall, floor") as server:
        versions = [httpx.post(server.url + "/setup", json={"schema": c}, headers=auth).json()["model_version"]
                    for c in (CONFIG, config)]
        r = httpx.post(server.url + "/predict", json=_predict_body([_task(1, "1a2b3c4d-coffee.png")], config),
                       headers=auth, timeout=120)
    assert versions[0] != versions[1]
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["model_version"] == versions[1]
    assert ref["names"][0] == "background"  # its pixels get no result
    assert_same_as_cli(r.json()["results"][0]["result"], ref["masks"]["coffee"], ref["names"])


def test_credentials_hosts_and_limits_are_enforced(stack):
    body = _predict_body([_task(1, "1a2b3c4d-coffee.png")])
    other = FakeLabelStudioFiles({"x.png": stack["images"]["coffee"]}, token=None)
    with BackgroundServer(other.app) as elsewhere, \
            stack["serve"](allow=[f"127.0.0.1:{elsewhere.port}"]) as server:
        for headers in ({}, {"Authorization": basic("u", "wrong-token-wrong-token")},
                        {"Authorization": f"Token {SERVER_TOKEN}"}):
            r = httpx.post(server.url + "/predict", json=body, headers=headers)
            assert r.status_code == 401 and "Basic authentication" in r.json()["error"]["message"]
        auth = {"Authorization": basic("u", SERVER_TOKEN)}

        def predict(url, config=CONFIG):
            task = _task(1, "x")
            task["data"]["image"] = url
            return httpx.post(server.url + "/predict", json=_predict_body([task], config), headers=auth, timeout=60)

        # another host: refused before any connection (192.0.2.0/24 is reserved for documentation)
        r = predict("http://192.0.2.7/data/upload/1/a.png")
        assert r.status_code == 422 and "not on Label Studio" in r.json()["error"]["message"]
        assert "--label-studio-allow-host 192.0.2.7" in r.json()["error"]["message"]
        for url in ("s3://bucket/a.png", "file:///etc/passwd", "data:image/png;base64,AAAA"):
            assert predict(url).status_code == 422
        # an allowed host is used, without Label Studio's token
        assert predict(f"{elsewhere.url}/data/upload/1/x.png").status_code == 200
        assert other.seen and "authorization" not in other.seen[0][1]
        # no <BrushLabels>: a message saying what to add
        r = predict("/data/upload/1/1a2b3c4d-coffee.png", config='<View><Image name="i" value="$image"/></View>')
        assert r.status_code == 422 and "<BrushLabels" in r.json()["error"]["message"]
    for limits, words in (({"max_bytes": 1000}, "bytes"), ({"max_pixels": 100}, "megapixels")):
        with stack["serve"](**limits) as server:
            r = httpx.post(server.url + "/predict", json=body, headers={"Authorization": basic("u", SERVER_TOKEN)})
            assert r.status_code == 422 and words in r.json()["error"]["message"], r.text


def test_rle_round_trip_and_hostile_input():
    rng = np.random.default_rng(3)
    for shape in ((1, 1), (5, 3), (37, 41), (300, 257)):
        mask = rng.random(shape) < 0.4
        np.testing.assert_array_equal(mask_from_rle(encode_rle(mask), shape[1], shape[0]), mask)
    long_run = np.zeros((400, 500), bool)
    long_run[50:390, 10:490] = True  # runs longer than the 16-bit field: split
    np.testing.assert_array_equal(mask_from_rle(encode_rle(long_run), 500, 400), long_run)
    rle = encode_rle(long_run)
    with pytest.raises(RLEError, match="needs"):
        mask_from_rle(rle, 499, 400)  # another size than the header's count
    with pytest.raises(RLEError, match="truncated"):
        mask_from_rle(rle[: len(rle) // 2], 500, 400)
    with pytest.raises(RLEError, match="byte values"):
        mask_from_rle([0, 1, 2, 300, 4, 5, 6], 500, 400)
    from napari_cass.io import ImageTooLargeError

    with pytest.raises(ImageTooLargeError):  # refused before a mask is allocated
        mask_from_rle(rle, 200_000, 200_000)


def test_label_config_parsing():
    target = brush_target(CONFIG)
    assert (target.from_name, target.to_name, target.data_key) == ("tag", "image", "image")
    assert target.labels == ("cat", "sky", "grass")
    assert target.words == (("cat", "kitten"), ("sky",), ("grass",))
    for bad, words in (("<View><Image name='i' value='$image'/></View>", "no <BrushLabels>"),
                       ("<View><BrushLabels name='t' toName='i'><Label value='a'/></BrushLabels></View>",
                        "must name an <Image>"),
                       ("<View><Image name='i' value='$image'/><BrushLabels name='t' toName='i'/></View>",
                        "no <Label"),
                       ("<!DOCTYPE x [<!ENTITY a 'b'>]><View/>", "DOCTYPE"), ("<View", "not valid XML")):
        with pytest.raises(LabelConfigError, match=words):
            brush_target(bad)


def test_convert_round_trips(tmp_path, cli_builds, capsys):
    """CLI folder -> Label Studio tasks -> dataset folder, and that dataset -> tasks -> dataset."""
    from napari_cass import cli
    from napari_cass.io import read_classes_json, read_label_image

    images = real_images(tmp_path / "photos")
    ref = cli_masks(tmp_path / "photos", tmp_path / "cli")
    assert cli.main(["convert", "to-label-studio", str(tmp_path / "cli"), "--out", str(tmp_path / "tasks.json"),
                     "--document-root", str(tmp_path)]) == 0
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert sorted(t["data"]["image"] for t in tasks) == ["/data/local-files/?d=photos/astronaut.png",
                                                         "/data/local-files/?d=photos/coffee.png"]
    config = (tmp_path / "tasks.xml").read_text()
    assert brush_target(config).labels == tuple(ref["names"][1:])
    for task in tasks:
        assert_same_as_cli(task["predictions"][0]["result"], ref["masks"][Path(task["data"]["image"]).stem],
                           ref["names"])
    assert cli.main(["convert", "from-label-studio", str(tmp_path / "tasks.json"), "--from", "predictions",
                     "--images", str(tmp_path / "photos"), "--label-config", str(tmp_path / "tasks.xml"),
                     "--out", str(tmp_path / "dataset")]) == 0
    doc = read_classes_json(tmp_path / "dataset" / "classes.json")
    assert [c["name"] for c in doc["classes"]] == ref["names"]
    assert doc["classes"][1]["synonyms"] == ["cat", "kitten"]
    for stem in images:
        np.testing.assert_array_equal(read_label_image(tmp_path / "dataset" / "masks" / f"{stem}.png"),
                                      ref["masks"][stem])
    # the dataset folder goes the same way back
    assert cli.main(["convert", "to-label-studio", str(tmp_path / "dataset"), "--out", str(tmp_path / "t2.json")]) == 0
    again = json.loads((tmp_path / "t2.json").read_text())
    for task in again:
        assert_same_as_cli(task["predictions"][0]["result"], ref["masks"][Path(task["data"]["image"]).stem],
                           ref["names"])
    # no silent overwrite
    assert cli.main(["convert", "to-label-studio", str(tmp_path / "dataset"), "--out", str(tmp_path / "t2.json")]) == 2
    assert "exist" in capsys.readouterr().err
