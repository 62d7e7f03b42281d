"""Writer contributions: write a Labels layer, read it back, same labels and classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from napari.layers import Labels

from napari_cass.plugin._classes import META_KEY, LabelClasses
from napari_cass.plugin._writers import (
    LabelsWriterError,
    write_labels_coco,
    write_labels_png,
    write_labels_tiff,
)
from napari_cass.io import read_classes_json, read_label_image

MANIFEST = Path(__file__).resolve().parents[1] / "napari.yaml"


def _layer(labels: np.ndarray, names: list[str], name: str = "pic labels") -> Labels:
    classes = LabelClasses.from_names(names, synonyms=[[f"{n}s"] for n in names])
    layer = Labels(labels, name=name)
    layer.features = classes.features()
    layer.metadata[META_KEY] = classes.to_meta(image="pic", method="cass", preset="interactive")
    return layer


def _labels(shape: tuple[int, int] = (40, 50), top: int = 3) -> np.ndarray:
    rng = np.random.default_rng(3)
    lab = np.zeros(shape, dtype=np.uint16)
    lab[5:20, 5:25] = 1
    lab[25:35, 10:45] = min(2, top)
    lab[rng.random(shape) > 0.97] = top
    return lab


def _write(writer, path: Path, layer: Labels) -> list[str]:
    data, meta, _ = layer.as_layer_data_tuple()
    return writer(str(path), data, meta)


def test_png_round_trip_with_classes_json(tmp_path: Path) -> None:
    layer = _layer(_labels(), ["cat", "dog", "grass"])
    written = _write(write_labels_png, tmp_path / "mask.png", layer)
    assert written == [str(tmp_path / "mask.png"), str(tmp_path / "classes.json")]
    np.testing.assert_array_equal(read_label_image(tmp_path / "mask.png"), layer.data)
    doc = read_classes_json(tmp_path / "classes.json")
    assert [c["name"] for c in doc["classes"]] == ["background", "cat", "dog", "grass"]
    assert [c["synonyms"] for c in doc["classes"]][1] == ["cats"]
    meta = layer.metadata[META_KEY]
    assert [c["color"] for c in doc["classes"]] == meta["colors"]
    assert doc["method"] == "cass" and doc["image"] == "pic"
    from PIL import Image

    with Image.open(tmp_path / "mask.png") as im:  # the palette carries the class colours
        assert im.mode == "P"
        assert list(im.getpalette()[3:6]) == meta["colors"][1]

    # same classes again: classes.json is left as it is, the chosen mask is replaced
    stamp = (tmp_path / "classes.json").stat().st_mtime_ns
    _write(write_labels_png, tmp_path / "mask2.png", layer)
    assert (tmp_path / "classes.json").stat().st_mtime_ns == stamp


def test_other_classes_never_clobber_classes_json(tmp_path: Path, monkeypatch) -> None:
    import napari.utils.notifications as notifications

    warnings: list[str] = []
    monkeypatch.setattr(notifications, "show_warning", lambda m: warnings.append(m))
    _write(write_labels_png, tmp_path / "a.png", _layer(_labels(), ["cat", "dog", "grass"]))
    original = (tmp_path / "classes.json").read_text()
    written = _write(write_labels_png, tmp_path / "b.png", _layer(_labels(), ["car", "road", "sky"]))
    assert (tmp_path / "classes.json").read_text() == original
    assert written[1] == str(tmp_path / "b.classes.json")
    names = [c["name"] for c in read_classes_json(tmp_path / "b.classes.json")["classes"]]
    assert names == ["background", "car", "road", "sky"]
    assert warnings and "other classes" in warnings[0]


def test_tiff_round_trip_many_labels(tmp_path: Path) -> None:
    names = [f"class {i}" for i in range(1, 301)]
    lab = _labels(top=300)
    layer = _layer(lab, names)
    with pytest.raises(LabelsWriterError, match="301 labels: choose .tif"):
        _write(write_labels_png, tmp_path / "mask.png", layer)
    _write(write_labels_tiff, tmp_path / "mask.tif", layer)
    back = read_label_image(tmp_path / "mask.tif")
    np.testing.assert_array_equal(back, lab)
    assert back.max() == 300
    doc = read_classes_json(tmp_path / "classes.json")
    assert len(doc["classes"]) == 301 and doc["classes"][300]["name"] == "class 300"


def test_coco_json_loads_with_pycocotools(tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    lab = _labels()
    _write(write_labels_coco, tmp_path / "pic.json", _layer(lab, ["cat", "dog", "grass"]))
    coco = COCO(str(tmp_path / "pic.json"))
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert sorted(cats.values()) == ["cat", "dog", "grass"]  # label 0 is not annotated
    for ann in coco.loadAnns(coco.getAnnIds()):
        name = cats[ann["category_id"]]
        k = ["background", "cat", "dog", "grass"].index(name)
        np.testing.assert_array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), lab == k)


def _stack() -> np.ndarray:
    """(3, 20, 30) labels 0..4, every slice different."""
    rng = np.random.default_rng(11)
    stack = np.zeros((3, 20, 30), np.uint8)
    for z in range(3):
        stack[z, 2 + z: 9 + 2 * z, 3: 12 + 5 * z] = z + 1
    stack[rng.random(stack.shape) > 0.95] = 4
    return stack


def test_stack_round_trips_through_multipage_tiff(tmp_path: Path) -> None:
    import tifffile

    stack = _stack()
    layer = _layer(stack, ["a", "b", "c", "d"])
    written = _write(write_labels_tiff, tmp_path / "stack.tif", layer)
    assert written == [str(tmp_path / "stack.tif"), str(tmp_path / "classes.json")]
    with tifffile.TiffFile(tmp_path / "stack.tif") as tif:
        assert len(tif.pages) == 3 and tif.series[0].axes == "ZYX"
        back = tif.asarray()
    assert back.dtype == np.uint16 and back.shape == (3, 20, 30)
    np.testing.assert_array_equal(back, stack)
    names = [c["name"] for c in read_classes_json(tmp_path / "classes.json")["classes"]]
    assert names == ["background", "a", "b", "c", "d"]


def test_tiff_takes_uint32_when_labels_pass_65535(tmp_path: Path) -> None:
    import tifffile

    lab = np.zeros((2, 4, 5), np.uint32)
    lab[0, 1, 1], lab[1, 3, 4] = 70_000, 65_536
    written = _write(write_labels_tiff, tmp_path / "big.tif", Labels(lab, name="plain"))
    back = tifffile.imread(written[0])
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(back, lab)
    assert len(read_classes_json(tmp_path / "classes.json")["classes"]) == 70_001


def test_bad_layers_get_clear_errors(tmp_path: Path) -> None:
    stack = _layer(np.zeros((2, 8, 8), np.uint8), ["a"])
    with pytest.raises(LabelsWriterError, match=r"PNG writer takes one 2-D \(H, W\) label image "
                       r"with labels 0-255; this Labels layer has shape \(2, 8, 8\) \(a 3-D stack\): "
                       r"choose \.tif in the save dialog"):
        _write(write_labels_png, tmp_path / "s.png", stack)
    with pytest.raises(LabelsWriterError, match=r"COCO writer takes one 2-D.*choose \.tif"):
        _write(write_labels_coco, tmp_path / "s.json", stack)
    with pytest.raises(LabelsWriterError, match=r"TIFF writer takes a 2-D \(H, W\) label image or a "
                       r"3-D \(Z, H, W\) stack.*shape \(2, 2, 4, 4\): save one \(Z, H, W\) part"):
        _write(write_labels_tiff, tmp_path / "s.tif", _layer(np.zeros((2, 2, 4, 4), np.uint8), ["a"]))
    assert not list(tmp_path.iterdir())  # nothing written by a refused save
    layer = _layer(np.full((8, 8), 5, np.uint8), ["a", "b"])
    for writer, name in [(write_labels_png, "x.png"), (write_labels_tiff, "x.tif"),
                         (write_labels_coco, "x.json")]:
        with pytest.raises(LabelsWriterError, match=r"holds label 5.*labels 0\.\.2"):
            _write(writer, tmp_path / name, layer)
    with pytest.raises(LabelsWriterError, match="labels >= 0; this layer holds label -1"):
        write_labels_tiff(str(tmp_path / "n.tif"), np.full((4, 4), -1, np.int32), {})
    with pytest.raises(LabelsWriterError, match="integer labels; this layer holds float64"):
        write_labels_tiff(str(tmp_path / "f.tif"), np.full((4, 4), 0.5), {})
    with pytest.raises(LabelsWriterError, match="multiscale"):
        write_labels_tiff(str(tmp_path / "m.tif"), [np.zeros((4, 4), np.uint8)] * 2, {})
    assert not list(tmp_path.iterdir())
    # a plain Labels layer (not made by napari-cass) still saves, with made-up names
    plain = Labels(np.array([[0, 1], [2, 2]], np.uint8), name="plain")
    _write(write_labels_png, tmp_path / "plain.png", plain)
    names = [c["name"] for c in read_classes_json(tmp_path / "classes.json")["classes"]]
    assert names == ["background", "label 1", "label 2"]


def test_manifest_writers_through_napari(tmp_path: Path, npe2pm) -> None:
    """The napari.yaml contributions are wired: napari finds and calls our writers."""
    import napari
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    assert set(manifest.categories) == {"Annotation", "Segmentation"}
    manifest.validate_imports()  # every python_name in napari.yaml resolves
    layer = _layer(_labels(), ["cat", "dog", "grass"])
    with npe2pm.tmp_plugin(manifest=manifest):  # a test plugin manager, as if installed
        out = napari.save_layers(str(tmp_path / "viewer.png"), [layer], plugin="napari-cass")
        assert str(tmp_path / "viewer.png") in out
        np.testing.assert_array_equal(read_label_image(tmp_path / "viewer.png"), layer.data)
        json_out = napari.save_layers(str(tmp_path / "viewer.json"), [layer], plugin="napari-cass")
        assert json.loads(Path(json_out[0]).read_text())["categories"]
        # a stack saved the way napari saves a layer, and read back exactly
        from napari.components import LayerList

        stack = _layer(_stack(), ["a", "b", "c", "d"], name="stack labels")
        out = LayerList([stack]).save(str(tmp_path / "stack.tif"), plugin="napari-cass")
        assert out[0] == str(tmp_path / "stack.tif")
        import tifffile

        np.testing.assert_array_equal(tifffile.imread(out[0]), stack.data)
        # a refused save reaches the caller with its message (napari hides ValueErrors)
        with pytest.raises(LabelsWriterError, match=r"choose \.tif"):
            LayerList([stack]).save(str(tmp_path / "stack.png"), plugin="napari-cass")
        with pytest.raises(LabelsWriterError, match=r"choose \.tif"):
            napari.save_layers(str(tmp_path / "stack2.png"), [stack])
        assert not (tmp_path / "stack.png").exists() and not (tmp_path / "stack2.png").exists()
        samples = {s.key for s in npe2pm.iter_sample_data() for s in s[1]}
        assert {"astronaut", "chelsea", "coffee"} <= samples
    from napari_cass.plugin._sample_data import astronaut, chelsea, coffee

    for fn in (astronaut, chelsea, coffee):
        (data, kwargs, kind), = fn()
        assert kind == "image" and data.ndim == 3 and data.shape[-1] == 3 and kwargs["rgb"]
