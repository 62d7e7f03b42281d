"""napari-cass serve: tokens, request limits and malformed input (loopback only).

A server *configured* for a non-loopback address (``host="0.0.0.0"``) is started on
127.0.0.1, so its token rules are tested without leaving the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import stat
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from napari_cass.server import (BackgroundServer, Limits, RemoteSegmenter, RemoteSegmenterError, TokenError,
                                create_app, is_loopback, load_or_create_token, read_token)
from napari_cass.server._auth import check_bearer
from napari_cass.server._protocol import encode_array
from test_server_support import images, tiny_segmenter

TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def guarded():
    """A token-protected server, as for ``--host 0.0.0.0``, with small limits."""
    limits = Limits(max_upload_bytes=200_000, max_image_bytes=400_000, max_pixels=100_000, max_classes=5,
                    max_queries=8, max_word_chars=20, max_json_bytes=4000)
    app = create_app(tiny_segmenter(), token=TOKEN, host="0.0.0.0", limits=limits)
    with BackgroundServer(app) as server:
        yield server


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def put(server, key: str, body: bytes, ctype: str = "application/x-npy", encoding: str | None = "deflate",
        headers: dict | None = None) -> httpx.Response:
    h = {"Content-Type": ctype, **auth(), **(headers or {})}
    if encoding:
        h["Content-Encoding"] = encoding
    return httpx.put(f"{server.url}/v1/images/{key}", content=body, headers=h, timeout=30)


def post(server, body, headers: dict | None = None) -> httpx.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}/v1/segment", content=data, timeout=30,
                      headers={"Content-Type": "application/json", **auth(), **(headers or {})})


def error(r: httpx.Response) -> tuple[int, str, str]:
    e = r.json()["error"]
    return r.status_code, e["code"], e["message"]


def test_non_loopback_without_token_refused():
    seg = tiny_segmenter()
    for host in ("0.0.0.0", "192.168.1.20", "::", "gpu-box.example.org"):
        with pytest.raises(ValueError, match="without a token"):
            create_app(seg, host=host)
    create_app(seg, host="127.0.0.1")
    create_app(seg, host="::1")
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.org")


def test_missing_or_wrong_token_refused(guarded):
    key, payload = encode_array(images(1)[0])
    body = {"image": key, "job_id": "job-12345678", "classes": [{"name": "a", "queries": ["a"]}]}
    for headers in ({}, auth("wrong-token-of-some-length"), {"Authorization": "Basic " + TOKEN}):
        r = httpx.post(f"{guarded.url}/v1/segment", content=json.dumps(body), headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert error(r)[1] == "unauthorized"
        r = httpx.put(f"{guarded.url}/v1/images/{key}", content=payload, headers=headers)
        assert r.status_code == 401
        assert httpx.get(f"{guarded.url}/v1/info", headers=headers).status_code == 401
    health = httpx.get(f"{guarded.url}/health").json()  # open, and says what is served
    assert health["auth"] is True and health["device"] == "cpu" and health["method"] == "cass"
    assert "version" in health and "models" in health
    with pytest.raises(RemoteSegmenterError, match="check the token") as info:
        RemoteSegmenter(guarded.url, token="wrong-token-of-some-length").segment(images(1)[0], "a")
    assert info.value.status == 401
    with RemoteSegmenter(guarded.url, token=TOKEN) as remote:
        assert remote.segment(images(1)[0], "a, b").labels.shape == (40, 52)


def test_token_file_created_0600_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_CASS_CONFIG_DIR", str(tmp_path / "cfg"))
    token, path, created = load_or_create_token()
    assert created and path == tmp_path / "cfg" / "server-token" and len(token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, _, created_again = load_or_create_token()
    assert again == token and not created_again
    assert check_bearer(f"Bearer {token}", token) and not check_bearer(f"Bearer {token}x", token)
    assert not check_bearer(None, token) and not check_bearer(token, token)
    os.chmod(path, 0o644)
    with pytest.raises(TokenError, match="chmod 600"):
        read_token(path)
    short = tmp_path / "short"
    short.write_text("abc\n")
    short.chmod(0o600)
    with pytest.raises(TokenError, match="at least 16"):
        read_token(short)
    with pytest.raises(TokenError, match="does not exist"):
        read_token(tmp_path / "missing")


def test_serve_command_token_rules(tmp_path, monkeypatch):
    from napari_cass.server._cli import _server_token, add_serve_parser

    monkeypatch.setenv("NAPARI_CASS_CONFIG_DIR", str(tmp_path))
    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    args = parser.parse_args(["serve"])
    assert (args.host, args.port) == ("127.0.0.1", 8765)
    assert _server_token(args)[0] is None  # loopback: no token unless asked
    token, line = _server_token(parser.parse_args(["serve", "--host", "0.0.0.0"]))
    assert token == (tmp_path / "server-token").read_text().strip() and "generated" in line
    assert _server_token(parser.parse_args(["serve", "--host", "0.0.0.0"]))[0] == token
    own = tmp_path / "own"
    own.write_text("x" * 20 + "\n")
    own.chmod(0o600)
    assert _server_token(parser.parse_args(["serve", "--token-file", str(own)]))[0] == "x" * 20


def test_oversized_requests_refused(guarded):
    big = np.zeros((400, 300), np.uint8)  # 120 000 px > max_pixels (120 kB, compresses to ~150 B)
    key, payload = encode_array(big)
    status, code, message = error(put(guarded, key, payload))
    assert (status, code) == (413, "too_large") and "400 x 300" in message
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)  # 270 kB > 200 kB
    key, payload = encode_array(noise)
    assert error(put(guarded, key, payload))[:2] == (413, "too_large")
    raw = b"\0" * 10_000_000  # a zlib bomb: 10 MB of zeros in ~10 kB
    status, code, message = error(put(guarded, hashlib.sha256(raw).hexdigest(), zlib.compress(raw, 9)))
    assert (status, code) == (413, "too_large") and "decompresses" in message
    key = encode_array(images(1)[0])[0]
    many = [{"name": f"c{i}", "queries": [f"c{i}"]} for i in range(6)]
    assert error(post(guarded, {"image": key, "job_id": "job-12345678", "classes": many}))[:2] == \
        (422, "too_many_classes")
    long = [{"name": "x" * 21, "queries": ["x" * 21]}]
    assert error(post(guarded, {"image": key, "job_id": "job-12345678", "classes": long}))[:2] == \
        (422, "prompt_too_long")
    syn = [{"name": "a", "queries": [f"a{i}" for i in range(9)]}]
    assert error(post(guarded, {"image": key, "job_id": "job-12345678", "classes": syn}))[:2] == \
        (422, "prompt_too_long")
    assert error(post(guarded, b"{" + b" " * 5000 + b"}"))[:2] == (413, "too_large")


class _OpensFile:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malformed_requests_refused(guarded, tmp_path):
    image = images(1, 50)[0]  # not uploaded by another test (a stored key answers 200 at once)
    key, payload = encode_array(image)
    other = encode_array(images(1, 99)[0])[0]
    assert error(put(guarded, other, payload))[:2] == (400, "hash_mismatch")
    assert error(put(guarded, key, payload, ctype="text/plain"))[0] == 415
    assert error(put(guarded, key, payload, encoding="br"))[0] == 415
    assert error(put(guarded, key, b"not zlib at all"))[:2] == (400, "bad_image")
    # An object array (a pickle inside an .npy) is refused, never unpickled: unpickling
    # this one would create a file.
    marker = tmp_path / "unpickled"
    buf = io.BytesIO()
    np.save(buf, np.array([_OpensFile(str(marker))], dtype=object), allow_pickle=True)
    raw = buf.getvalue()
    status, code, message = error(put(guarded, hashlib.sha256(raw).hexdigest(), raw, encoding=None))
    assert status == 422 and "dtype object" in message and not marker.exists()
    bad_shape = encode_array(np.zeros((4, 4, 5), np.uint8))
    assert error(put(guarded, *bad_shape))[0] == 422
    text = b"GIF89a not really"
    status, _, message = error(put(guarded, hashlib.sha256(text).hexdigest(), text, "image/png", None))
    assert status == 400 and "PNG or JPEG" in message
    assert put(guarded, "../../etc/passwd", payload).status_code in (400, 404)
    assert error(put(guarded, "A" * 64, payload))[0] == 400  # keys are lower-case hex only
    assert put(guarded, key, payload).status_code == 201
    good = {"image": key, "job_id": "job-12345678", "classes": [{"name": "a", "queries": ["a"]}]}
    assert error(post(guarded, b"{not json"))[:2] == (400, "bad_request")
    assert error(post(guarded, [1, 2]))[0] == 400
    for change in ({"image": "../x"}, {"job_id": "x"}, {"job_id": "../../../../tmp/x"}, {"classes": []},
                   {"classes": ["a"]}, {"classes": [{"name": "a", "queries": [1]}]},
                   {"background": "sky"}, {"method": "nope"}, {"preset": "nope"},
                   {"classes": [{"name": "a", "queries": ["a"]}, {"name": "A", "queries": ["b"]}]}):
        status, code, message = error(post(guarded, {**good, **change}))
        assert status in (400, 422), (change, status)
        assert message
    assert error(post(guarded, {**good, "image": other}))[:2] == (428, "need_pixels")
    assert httpx.get(f"{guarded.url}/v1/nothing-here", headers=auth()).json()["error"]["code"] == "not_found"
    assert post(guarded, good).status_code == 200  # and the server still serves


def test_png_and_jpeg_uploads_decode_like_pillow(guarded):
    image = images(1, 3)[0]
    for fmt, ctype in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format=fmt)
        data = buf.getvalue()
        key = hashlib.sha256(data).hexdigest()
        r = put(guarded, key, data, ctype, None)
        assert r.status_code == 201 and r.json()["shape"] == [40, 52, 3]
        body = {"image": key, "job_id": f"job-{fmt.lower()}-1234", "confidence": True,
                "classes": [{"name": "a", "queries": ["a"]}, {"name": "b", "queries": ["b"]}]}
        reply = post(guarded, body).json()
        assert reply["shape"] == [40, 52] and reply["confidence_png"]


@pytest.mark.parametrize("backend", ["httpx", "urllib"])
def test_https_with_a_self_signed_certificate(tmp_path, backend):
    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    app = create_app(tiny_segmenter(), token=TOKEN, host="0.0.0.0")
    with BackgroundServer(app, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile)) as server:
        assert server.url.startswith("https://")
        with RemoteSegmenter(server.url, token=TOKEN, ca_file=cafile, backend=backend) as remote:
            assert remote.segment(images(1, 20)[0], "a, b").labels.shape == (40, 52)
        with pytest.raises(RemoteSegmenterError, match="certificate is not trusted"):
            RemoteSegmenter(server.url, token=TOKEN, backend=backend).segment(images(1, 20)[0], "a")
        plain = server.url.replace("https://", "http://")
        with pytest.raises(RemoteSegmenterError):
            RemoteSegmenter(plain, token=TOKEN, backend=backend, timeout=10).segment(images(1, 20)[0], "a")
