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
                                   basic, cli_masks, real_images)
from napari_cass.integrations import LabelConfigError, RLEError, brush_target, encode_rle, mask_from_rle
from napari_cass.integrations.label_studio import label_studio_from_args
from napari_cass.server import BackgroundServer, create_app


def _segmenter(tiny_model_set):
    """The engine the CLI's tests build (cli_builds): same models, method and preset."""
    from napari_cass.engine import Segmenter

    return Segmenter.from_models(*tiny_model_set, method="cass", preset="interactive", device="cpu")


def _backend(url: str, tmp_path: Path, background=None, allow=(), token=LS_TOKEN, **limits):
    token_file = tmp_path / "ls-token"
    token_file.write_text(token + "\n")
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
        # a redirect from Label Studio is followed to an allowed host only (no token there)
        assert predict(f"/data/redirect?to={elsewhere.url}/data/upload/1/x.png").status_code == 200
        assert len(other.seen) == 2 and "authorization" not in other.seen[1][1]
        r = predict("/data/redirect?to=http://192.0.2.7/x.png")
        assert r.status_code == 422 and "not on Label Studio" in r.json()["error"]["message"]
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


def test_serve_command_flags(tmp_path, stack):
    """``napari-cass serve --label-studio URL --label-studio-token-file F`` as a user runs it."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from napari_cass import cli
    from napari_cass.server import TokenError

    parse = cli.build_parser().parse_args
    (tmp_path / "open").write_text(LS_TOKEN)
    (tmp_path / "open").chmod(0o644)
    with pytest.raises(TokenError, match="chmod 600"):
        label_studio_from_args(parse(["serve", "--label-studio", stack["ls"].url,
                                      "--label-studio-token-file", str(tmp_path / "open")]))
    with pytest.raises(ValueError, match="needs --label-studio"):
        label_studio_from_args(parse(["serve", "--label-studio-background", "sky"]))
    with pytest.raises(ValueError, match="http"):
        label_studio_from_args(parse(["serve", "--label-studio", "ftp://x"]))
    assert label_studio_from_args(parse(["serve"])) is None
    token = tmp_path / "ls-token"
    token.write_text(LS_TOKEN + "\n")
    token.chmod(0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = ("import argparse, sys\n"
              "from napari_cass.server._cli import add_serve_parser\n"
              "from test_server_support import tiny_segmenter\n"
              "p = argparse.ArgumentParser(); add_serve_parser(p.add_subparsers())\n"
              "args = p.parse_args(sys.argv[1:])\n"
              "sys.exit(args.func(args, segmenter=tiny_segmenter()))\n")
    proc = subprocess.Popen([sys.executable, "-c", script, "serve", "--port", str(port), "--log-level", "warning",
                             "--label-studio", stack["ls"].url, "--label-studio-token-file", str(token),
                             "--label-studio-background", "wall"],
                            env={**os.environ, "PYTHONPATH": os.path.dirname(__file__)}, stderr=subprocess.PIPE,
                            text=True)
    try:
        url, end, r = f"http://127.0.0.1:{port}", time.monotonic() + 120, None
        while proc.poll() is None and time.monotonic() < end:
            try:
                r = httpx.post(url + "/predict", json=_predict_body([_task(1, "1a2b3c4d-coffee.png")]), timeout=60)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert proc.poll() is None and r is not None and r.status_code == 200, r and r.text
        assert r.json()["results"][0]["result"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"Label Studio ML backend on, images from {stack['ls'].url}/" in err


# --------------------------------------------------------------------------- a real Label Studio
def _label_studio_executable() -> str:
    import os
    import shutil

    exe = os.environ.get("NAPARI_CASS_LABEL_STUDIO") or shutil.which("label-studio")
    if not exe or not Path(exe).is_file():
        pytest.fail("Label Studio is not installed: install label-studio==1.23.2 in a venv of its own "
                    "(it pins numpy < 2.3; .ci/run does this) and set NAPARI_CASS_LABEL_STUDIO to "
                    "its label-studio executable.")
    return exe


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory):
    """A real Label Studio on loopback, SQLite in a temporary data dir, one user with a known token."""
    import os
    import socket
    import subprocess
    import time

    exe = _label_studio_executable()
    data = tmp_path_factory.mktemp("label-studio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HOME": str(data), "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false",
           "COLLECT_ANALYTICS": "false", "LATEST_VERSION_CHECK": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    env.pop("HOST", None)
    log = open(data / "label-studio.log", "w")
    proc = subprocess.Popen([exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(data / "data"), "--username", "test@example.com",
                             "--password", "napari-cass-test", "--user-token", LS_TOKEN,
                             "--enable-legacy-api-token"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("Label Studio did not start:\n" + (data / "label-studio.log").read_text()[-3000:])
            time.sleep(1)
        yield {"url": url, "exe": exe}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_real_label_studio(label_studio, tmp_path, tiny_model_set, cli_builds):
    """Project + two image tasks in Label Studio, napari-cass connected as its ML backend:
    what Label Studio stores decodes to the CLI's masks; a label added later is used; the
    annotations exported from Label Studio convert to a dataset with the same masks."""
    from napari_cass.integrations._ls_convert import label_studio_to_dataset
    from napari_cass.io import read_label_image

    ls, headers = label_studio["url"], {"Authorization": f"Token {LS_TOKEN}"}
    client = httpx.Client(base_url=ls, headers=headers, timeout=120, trust_env=False)
    images = real_images(tmp_path / "photos")
    r = client.post("/api/projects", json={"title": "napari-cass test", "label_config": CONFIG})
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    files = {p.name: (p.name, p.read_bytes(), "image/png") for p in images.values()}
    assert client.post(f"/api/projects/{pid}/import", files=files).status_code == 201
    tasks = client.get("/api/tasks", params={"project": pid}).json()["tasks"]
    stem_of = {t["id"]: Path(t["data"]["image"]).stem.split("-", 1)[1] for t in tasks}
    assert sorted(stem_of.values()) == ["astronaut", "coffee"]

    # a personal access token (a JWT: napari-cass exchanges it for access tokens), as Label Studio
    # hands out by default; the legacy token form is covered by the tests above
    r = client.post("/api/token/")
    assert r.status_code == 201, r.text
    backend = _backend(ls, tmp_path, token=r.json()["token"])
    assert backend.fetcher._is_jwt()
    app = create_app(_segmenter(tiny_model_set), token=SERVER_TOKEN)
    backend.mount(app, SERVER_TOKEN)

    def predictions(config, cli_out, classes):
        ref = cli_masks(tmp_path / "photos", tmp_path / cli_out, classes=classes)
        r = client.post("/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
                        json={"selectedItems": {"all": True, "excluded": []}})
        assert r.status_code == 200, r.text
        version = client.get(f"/api/ml/{ml_id}").json()["model_version"]
        stored = {}
        for tid, stem in stem_of.items():
            preds = [p for p in client.get("/api/predictions", params={"task": tid}).json()
                     if p["model_version"] == version]
            assert len(preds) == 1, f"task {tid}: {len(preds)} predictions of {version}"
            assert_same_as_cli(preds[0]["result"], ref["masks"][stem], ref["names"])
            stored[tid] = preds[0]
        return ref, version, stored

    with BackgroundServer(app) as server:
        r = client.post("/api/ml", json={"url": server.url, "project": pid, "title": "napari-cass",
                                         "auth_method": "BASIC_AUTH", "basic_auth_user": "label-studio",
                                         "basic_auth_pass": SERVER_TOKEN})
        assert r.status_code == 201, r.text
        ml_id = r.json()["id"]
        assert r.json()["readable_state"] == "Connected"
        _, first, _ = predictions(CONFIG, "cli1", CLASSES)
        # a label added in Label Studio: the next prediction uses it, no restart
        config = CONFIG.replace('<Label value="grass"/>', '<Label value="grass"/><Label value="road"/>')
        assert client.patch(f"/api/projects/{pid}", json={"label_config": config}).status_code == 200
        ref, second, stored = predictions(config, "cli2", CLASSES + ", road")
    assert first != second
    # Label Studio -> dataset: annotations made from the predictions, exported, converted
    for tid, pred in stored.items():
        r = client.post(f"/api/tasks/{tid}/annotations", json={"result": pred["result"]})
        assert r.status_code == 201, r.text
    export = client.get(f"/api/projects/{pid}/export", params={"exportType": "JSON"})
    assert export.status_code == 200
    (tmp_path / "export.json").write_bytes(export.content)
    done = label_studio_to_dataset(tmp_path / "export.json", tmp_path / "dataset", images_dir=tmp_path / "photos",
                                   label_config=config)
    assert done["classes"] == ref["names"] and sorted(done["images"]) == ["astronaut", "coffee"]
    for stem in done["images"]:
        np.testing.assert_array_equal(read_label_image(tmp_path / "dataset" / "masks" / f"{stem}.png"),
                                      ref["masks"][stem])
    client.close()


def test_rle_matches_label_studio_sdk(tmp_path):
    """Label Studio SDK's own brush codec (in Label Studio's venv) reads ours and we read its."""
    import subprocess

    python = Path(_label_studio_executable()).with_name("python")
    rng = np.random.default_rng(5)
    masks = [rng.random((23, 31)) < 0.5, np.zeros((300, 400), bool), np.ones((17, 9), bool)]
    masks[1][20:280, 5:395] = True
    (tmp_path / "ours.json").write_text(json.dumps([{"shape": m.shape, "mask": m.astype(int).ravel().tolist(),
                                                     "rle": encode_rle(m)} for m in masks]))
    script = """
import json, sys, numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
cases = json.load(open(sys.argv[1]))
out = []
for c in cases:
    h, w = c["shape"]
    m = np.array(c["mask"], np.uint8).reshape(h, w)
    rgba = decode_rle(c["rle"]).reshape(h, w, 4)
    assert (rgba == (m * 255)[:, :, None]).all(), "the SDK decodes napari-cass RLE differently"
    out.append(mask2rle(m * 255))
json.dump(out, open(sys.argv[2], "w"))
"""
    subprocess.run([str(python), "-c", script, str(tmp_path / "ours.json"), str(tmp_path / "sdk.json")],
                   check=True, timeout=120)
    for mask, rle in zip(masks, json.loads((tmp_path / "sdk.json").read_text())):
        np.testing.assert_array_equal(mask_from_rle(rle, mask.shape[1], mask.shape[0]), mask)
        assert rle == encode_rle(mask)  # byte for byte what the SDK writes
