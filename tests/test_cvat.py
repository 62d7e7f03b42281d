"""The CVAT auto-annotation function (napari_cass.integrations.cvat), checked by cvat-sdk itself.

No CVAT server can run here: the function's spec is built with the SDK's
``DetectionFunctionSpec`` (which validates it), its shapes go through the SDK driver's
own check-and-remap step (what ``annotate_task`` does with each frame's output, against
the labels of a task), and every mask is decoded with ``cvat_sdk.masks.decode_mask`` and
compared with the CLI's mask for the same image and classes (tiny random-weight models,
real photographs from scikit-image).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from _label_studio_support import real_images

import cvat_sdk.auto_annotation as cvataa  # cvat-cli is in the [testing] extra: never skipped
from cvat_sdk.auto_annotation.driver import _AnnotationMapper, _DetectionFunctionContextImpl  # noqa: E402
from cvat_sdk.masks import decode_mask  # noqa: E402

from napari_cass.integrations import cvat  # noqa: E402

CLASSES = "person | astronaut, cup, sky"


def _segmenter(tiny_model_set):
    from napari_cass.engine import Segmenter

    return Segmenter.from_models(*tiny_model_set, method="cass", preset="interactive", device="cpu")


def _task_labels(names, type_="mask"):
    """Labels of a CVAT task, as the driver reads them (name, id, type, no sublabels or attributes)."""
    return [SimpleNamespace(name=n, id=100 + i, type=type_, sublabels=[], attributes=[]) for i, n in enumerate(names)]


def _run(function, image, names, **context):
    """detect() on one frame, then the SDK's validation and remapping of its output."""
    poly = context.get("conv_mask_to_poly", False)
    mapper = _AnnotationMapper(logging.getLogger("test"), function.spec.labels,
                               _task_labels(names, "polygon" if poly else "mask"), allow_unmatched_labels=False,
                               conv_mask_to_poly=poly)
    ctx = _DetectionFunctionContextImpl(frame_name="frame.png", **context)
    tags, shapes = mapper.validate_and_remap(function.detect(ctx, image), ds_frame=3)
    assert tags == [] and all(s.frame == 3 for s in shapes)
    return shapes


def test_masks_pass_sdk_validation_and_equal_the_cli(tmp_path, tiny_model_set, cli_builds):
    from _label_studio_support import cli_masks

    images = real_images(tmp_path / "photos")
    ref = cli_masks(tmp_path / "photos", tmp_path / "cli", classes=CLASSES)
    function = cvat.create(classes=CLASSES, segmenter=_segmenter(tiny_model_set))
    assert isinstance(function.spec, cvataa.DetectionFunctionSpec)
    assert [(lab.name, lab.id, lab.type) for lab in function.spec.labels] == [
        ("person", 0, "mask"), ("cup", 1, "mask"), ("sky", 2, "mask")]
    names = ["person", "cup", "sky"]
    for stem, path in images.items():
        image = Image.open(path)
        shapes = _run(function, image, names)
        assert all(s.type.value == "mask" for s in shapes)
        by_label = {s.label_id: decode_mask(s.points, image_width=image.width, image_height=image.height)
                    for s in shapes}
        assert len(by_label) == len(shapes)  # one shape per class
        for k, name in enumerate(names):
            expected = ref["masks"][stem] == ref["names"].index(name)
            if expected.any():
                np.testing.assert_array_equal(by_label[100 + k], expected, err_msg=f"{stem}: {name}")
            else:
                assert 100 + k not in by_label


def test_polygons_threshold_and_server(tmp_path, tiny_model_set):
    from napari_cass.server import BackgroundServer, create_app

    image = Image.open(real_images(tmp_path / "photos")["coffee"])
    local = cvat.create(classes=CLASSES, background="wall", segmenter=_segmenter(tiny_model_set))
    result = local.segmenter.segment(np.asarray(image), local.prompts, background=["wall"])
    present = [k for k in range(3) if (result.labels == k + 1).any()]
    names = ["person", "cup", "sky"]
    masks = _run(local, image, names, conf_threshold=0.0)
    assert sorted(s.label_id - 100 for s in masks) == present  # the background class is never returned
    # a threshold above every mean confidence (all are below 1) drops every class
    assert _run(local, image, names, conf_threshold=1.0) == []
    # polygons: each vertex inside the image and within a pixel of the class's region
    polys = _run(local, image, names, conv_mask_to_poly=True)
    assert polys and {s.type.value for s in polys} == {"polygon"}
    assert {s.label_id - 100 for s in polys} == set(present)
    for s in polys:
        pts = np.asarray(s.points).reshape(-1, 2)
        assert len(pts) >= 3 and (pts >= 0).all() and (pts <= [image.width - 1, image.height - 1]).all()
        region = np.pad(result.labels == s.label_id - 100 + 1, 1)
        for x, y in pts:
            cx, cy = int(round(x)) + 1, int(round(y)) + 1
            assert region[cy - 1:cy + 2, cx - 1:cx + 2].any()
    # through napari-cass serve: the same masks
    with BackgroundServer(create_app(_segmenter(tiny_model_set))) as server:
        remote = cvat.create(classes=CLASSES, background="wall", server=server.url)
        got = _run(remote, image, names)
    assert [(s.label_id, s.points) for s in got] == [(s.label_id, s.points) for s in masks]


def test_loaded_as_cvat_cli_loads_it_and_bad_settings(monkeypatch, tmp_path, tiny_model_set):
    """``cvat-cli task auto-annotate --function-module napari_cass.integrations.cvat -p ...``: the
    module is loaded by cvat-cli's own loader, with parameters parsed by cvat-cli."""
    from cvat_cli._internal.common import FunctionLoader
    from cvat_cli._internal.parsers import parse_function_parameter

    from napari_cass.server import BackgroundServer, create_app

    with pytest.raises(ValueError, match="Name the classes"):
        cvat.create()
    with pytest.raises(ValueError, match="server"):
        cvat.create(classes="cat", token_file="t")
    with pytest.raises(ValueError):
        cvat.create(classes="cat, sky", background="sky")  # a word both a class and background
    image = Image.open(real_images(tmp_path / "photos")["astronaut"])
    names = ["person", "cup", "sky"]
    with BackgroundServer(create_app(_segmenter(tiny_model_set))) as server:
        params = dict(parse_function_parameter(p) for p in (f"classes=str:{CLASSES}", f"server=str:{server.url}"))
        function = FunctionLoader("napari_cass.integrations.cvat", None, params).load()
        assert [lab.name for lab in function.spec.labels] == names
        shapes = _run(function, image, names)
        # no -p at all: cvat-cli still calls create(); the environment names the classes and server
        monkeypatch.setenv("NAPARI_CASS_CLASSES", CLASSES)
        monkeypatch.setenv("NAPARI_CASS_SERVER", server.url)
        from_env = FunctionLoader("napari_cass.integrations.cvat", None, {}).load()
        assert [(s.label_id, s.points) for s in _run(from_env, image, names)] == \
            [(s.label_id, s.points) for s in shapes]
    assert shapes
    # a task whose labels are polygons only needs "convert masks to polygons": the SDK says so
    with pytest.raises(cvataa.BadFunctionError, match="'mask' in the function, but 'polygon'"):
        _AnnotationMapper(logging.getLogger("test"), function.spec.labels, _task_labels(names, "polygon"),
                          allow_unmatched_labels=False, conv_mask_to_poly=False)
