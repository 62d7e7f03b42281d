"""Shared pieces of the Label Studio tests (no tests here): images, a stand-in Label Studio
file server, the CLI's masks for reference, and decoding what Label Studio stores."""

import base64  # no "from __future__ import annotations": FastAPI reads the route annotations
import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

LS_TOKEN = "0123456789abcdef0123456789abcdef01234567"  # a Label Studio user token (legacy form)
SERVER_TOKEN = "napari-cass-server-token-for-tests"
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="cat" prompts="cat | kitten" background="#ff0000"/>
    <Label value="sky"/>
    <Label value="grass"/>
  </BrushLabels>
</View>"""
CLASSES = "cat | kitten, sky, grass"  # the same classes, as the CLI takes them


def real_images(folder: Path) -> dict[str, Path]:
    """Two small real photographs (scikit-image's astronaut and coffee) as PNG files."""
    from skimage import data
    from skimage.transform import resize

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, img, shape in (("astronaut", data.astronaut(), (48, 56)), ("coffee", data.coffee(), (40, 60))):
        small = (resize(img, shape, anti_aliasing=True) * 255).round().astype(np.uint8)
        out[name] = folder / f"{name}.png"
        Image.fromarray(small).save(out[name])
    return out


def cli_masks(folder: Path, out: Path, classes: str = CLASSES, background: str | None = None) -> dict[str, Any]:
    """``napari-cass segment`` over ``folder``: ``{stem: mask}`` and the class names of its values."""
    from napari_cass import cli
    from napari_cass.io import read_classes_json, read_label_image

    argv = ["segment", str(folder), "--classes", classes, "--out", str(out)]
    if background:
        argv += ["--background", background]
    assert cli.main(argv) == 0
    names = [c["name"] for c in read_classes_json(out / "classes.json")["classes"]]
    masks = {p.stem: read_label_image(p) for p in out.glob("*.png") if not p.stem.endswith("_overlay")}
    return {"masks": masks, "names": names}


def decoded(results: list[dict]) -> dict[str, np.ndarray]:
    """``{label: bool mask}`` of BrushLabels results, decoded with napari-cass's RLE decoder."""
    from napari_cass.integrations import mask_from_rle

    out = {}
    for r in results:
        assert r["type"] == "brushlabels" and r["value"]["format"] == "rle"
        (label,) = r["value"]["brushlabels"]
        assert label not in out, f"two results for {label}"
        out[label] = mask_from_rle(r["value"]["rle"], r["original_width"], r["original_height"])
    return out


def assert_same_as_cli(results: list[dict], cli_mask: np.ndarray, names: list[str]) -> None:
    """Every label's mask equals the CLI mask's pixels of that class; absent labels are absent."""
    masks = decoded(results)
    for value, name in enumerate(names):
        if name == "background":
            assert name not in masks
            continue
        expected = cli_mask == value
        if expected.any():
            np.testing.assert_array_equal(masks[name], expected, err_msg=name)
        else:
            assert name not in masks, f"{name} has no pixel in the CLI mask but a result"
    assert set(masks) <= set(names)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class FakeLabelStudioFiles:
    """A stand-in for Label Studio's file serving: ``GET /data/upload/<project>/<name>``,
    answered only with ``Authorization: Token <LS_TOKEN>`` (as Label Studio does).

    ``files``: name -> path; every request's path and headers are recorded in ``seen``.
    """

    def __init__(self, files: dict[str, Path], token: str | None = LS_TOKEN):
        from fastapi import FastAPI, Request, Response

        self.files, self.seen = dict(files), []
        self._lock = threading.Lock()
        app = FastAPI()

        @app.get("/data/upload/{project}/{name}")
        async def upload(project: int, name: str, request: Request):
            with self._lock:
                self.seen.append((request.url.path, dict(request.headers)))
            if token is not None and request.headers.get("authorization") != f"Token {token}":
                return Response(status_code=401)
            path = self.files.get(name)
            if path is None:
                return Response(status_code=404)
            data = path.read_bytes()
            return Response(data, media_type="image/png" if path.suffix == ".png" else "application/octet-stream")

        @app.get("/data/redirect")
        async def redirect(to: str):  # what Label Studio does for cloud storage: a presigned URL
            return Response(status_code=303, headers={"Location": to})

        self.app = app
