"""Dataset readers of the evaluation harness, on tiny synthetic datasets in each layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_cass.evaluation import (
    DATASETS,
    FolderDataset,
    get_dataset,
    load_label_map,
)
from napari_cass.evaluation._cli import DATASET_NAMES, PAPER_DATASETS as CLI_PAPER_DATASETS
from napari_cass.evaluation._datasets import PAPER_DATASETS
from napari_cass.io import label_palette

H, W = 12, 16


def _image(path: Path, seed: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _mask(path: Path, values: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.ascontiguousarray(values, dtype=np.uint8)
    size = (values.shape[1], values.shape[0])
    if palette:  # VOC ground truth is a palette PNG: indices must be read, not colours
        im = Image.frombytes("P", size, values.tobytes())
        im.putpalette(label_palette(256).reshape(-1).tolist())
    else:
        im = Image.frombytes("L", size, values.tobytes())
    im.save(path)


def _gt(seed: int, high: int) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    gt = rng.integers(0, high, (H, W)).astype(np.uint8)
    gt[0, :3] = 255
    gt[1, 0] = 0
    return gt


def make_voc(base: Path, ids: list[str], high: int = 21) -> dict[str, np.ndarray]:
    voc = base / "VOCdevkit" / "VOC2012"
    gts = {}
    for k, i in enumerate(ids):
        _image(voc / "JPEGImages" / f"{i}.jpg", k)
        gts[i] = _gt(k, high)
        _mask(voc / "SegmentationClass" / f"{i}.png", gts[i], palette=True)
    split = voc / "ImageSets" / "Segmentation" / "val.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("\n".join(ids) + "\n")
    return gts


def make_context(base: Path, ids: list[str]) -> dict[str, np.ndarray]:
    voc = base / "VOCdevkit" / "VOC2010"
    gts = {}
    for k, i in enumerate(ids):
        _image(voc / "JPEGImages" / f"{i}.jpg", k)
        gts[i] = _gt(k, 60)
        _mask(voc / "SegmentationClassContext" / f"{i}.png", gts[i])
    split = voc / "ImageSets" / "SegmentationContext" / "val.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("\n".join(ids) + "\n")
    return gts


def make_coco(base: Path, ids: list[str], suffix: str, high: int) -> dict[str, np.ndarray]:
    root = base / "coco_stuff164k"
    gts = {}
    for k, i in enumerate(ids):
        _image(root / "images" / "val2017" / f"{i}.jpg", k)
        gts[i] = _gt(k, high)
        _mask(root / "annotations" / "val2017" / f"{i}{suffix}", gts[i])
    return gts


def make_ade(base: Path, ids: list[str]) -> dict[str, np.ndarray]:
    root = base / "ade" / "ADEChallengeData2016"
    gts = {}
    for k, i in enumerate(ids):
        _image(root / "images" / "validation" / f"{i}.jpg", k)
        gts[i] = _gt(k, 151)
        _mask(root / "annotations" / "validation" / f"{i}.png", gts[i])
    return gts


def make_cityscapes(base: Path, names: list[tuple[str, str]], raw: bool = False) -> dict[str, np.ndarray]:
    root = base / "cityscapes"
    gts = {}
    for k, (city, stem) in enumerate(names):
        _image(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", k)
        gts[stem] = _gt(k, 34 if raw else 19)
        kind = "labelIds" if raw else "labelTrainIds"
        _mask(root / "gtFine" / "val" / city / f"{stem}_gtFine_{kind}.png", gts[stem])
    return gts


def make_folder(root: Path, classes: list[dict], n: int = 2) -> dict[str, np.ndarray]:
    gts = {}
    for k in range(n):
        _image(root / "images" / f"img{k}.png", k)
        gts[f"img{k}"] = _gt(k, len(classes))
        _mask(root / "masks" / f"img{k}.png", gts[f"img{k}"])
    (root / "classes.json").write_text(json.dumps({"format": "napari-cass/classes@1", "classes": classes}))
    return gts


def _reduced(gt: np.ndarray) -> np.ndarray:
    out = gt.astype(np.int64) - 1
    out[(gt == 0) | (gt == 255)] = 255
    return out


# ---------------------------------------------------------------------------------------
def test_registry_matches_cli_names() -> None:
    assert tuple(DATASETS) == DATASET_NAMES
    assert PAPER_DATASETS == CLI_PAPER_DATASETS
    assert set(PAPER_DATASETS) <= set(DATASETS)


@pytest.mark.parametrize(
    "name, n_classes, preset, reduce, background",
    [
        ("voc21", 21, "voc21", False, True),
        ("voc20", 20, "voc20", True, False),
        ("context60", 60, "context60", False, True),
        ("context59", 59, "context59", True, False),
        ("coco_stuff", 171, "coco_stuff", False, False),
        ("coco_object", 81, "coco_object", False, True),
        ("ade20k", 150, "ade20k", True, False),
        ("cityscapes", 19, "cityscapes", False, False),
    ],
)
def test_benchmark_layouts(tmp_path: Path, name, n_classes, preset, reduce, background) -> None:
    ids = ["b_002", "a_001"]
    if name.startswith("voc"):
        gts = make_voc(tmp_path, ids)
    elif name.startswith("context"):
        gts = make_context(tmp_path, ids)
    elif name == "coco_stuff":
        gts = make_coco(tmp_path, ids, "_labelTrainIds.png", 171)
    elif name == "coco_object":
        gts = make_coco(tmp_path, ids, "_instanceTrainIds.png", 81)
    elif name == "ade20k":
        gts = make_ade(tmp_path, ids)
    else:
        gts = make_cityscapes(tmp_path, [("zurich", "b_002"), ("aachen", "a_001")])
    # root = the folder above everything (mmsegmentation's data/)
    ds = get_dataset(name, tmp_path)
    assert len(ds) == 2
    assert ds.num_classes == n_classes == len(ds.classes)
    assert ds.preset.name == preset
    assert ds.reduce_zero_label is reduce
    assert ds.has_background is background
    assert (ds.classes[0].name == "background") is background
    seen = []
    for image_id, image, gt in ds:
        seen.append(image_id)
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert gt.shape == (H, W)
        expected = _reduced(gts[image_id]) if reduce else gts[image_id].astype(np.int64)
        np.testing.assert_array_equal(gt, expected)
        valid = gt[gt != 255]
        assert valid.min() >= 0 and valid.max() < n_classes + (0 if reduce else 1)
    if name.startswith(("voc", "context")):
        assert seen == ids  # split-file order
    else:
        assert sorted(seen) == seen


def test_voc_palette_png_is_read_as_indices(tmp_path: Path) -> None:
    gts = make_voc(tmp_path, ["x"])
    arr = load_label_map(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/x.png")
    with Image.open(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/x.png") as im:
        assert im.mode == "P"
    np.testing.assert_array_equal(arr, gts["x"])


def test_root_may_be_dataset_folder_or_parent(tmp_path: Path) -> None:
    make_voc(tmp_path, ["x"])
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        ds = get_dataset("voc21", root)
        assert ds.root == tmp_path / "VOCdevkit" / "VOC2012"


def test_missing_dataset_lists_expected_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_dataset("voc21", tmp_path / "nowhere")
    (tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("voc21", tmp_path)
    msg = str(err.value)
    assert "SegmentationClass" in msg and "ImageSets/Segmentation/val.txt" in msg
    assert "JPEGImages/<id>.jpg" in msg  # the layout help
    with pytest.raises(FileNotFoundError, match="images/validation"):
        get_dataset("ade20k", tmp_path)


def test_split_listing_missing_files(tmp_path: Path) -> None:
    make_voc(tmp_path, ["x"])
    split = tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    split.write_text("x\nghost\n")
    with pytest.raises(FileNotFoundError, match=r"(?s)2 file\(s\).*ghost\.jpg"):
        get_dataset("voc21", tmp_path)
    split.write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        get_dataset("voc21", tmp_path)


def test_malformed_ground_truth(tmp_path: Path) -> None:
    make_voc(tmp_path, ["x", "y"])
    voc = tmp_path / "VOCdevkit/VOC2012"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(voc / "SegmentationClass/x.png")
    _mask(voc / "SegmentationClass/y.png", np.zeros((H + 1, W), np.uint8))
    ds = get_dataset("voc21", tmp_path)
    with pytest.raises(ValueError, match="colour"):
        ds[0]
    with pytest.raises(ValueError, match="same size"):
        ds[1]
    (voc / "JPEGImages/x.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="Cannot read image"):
        ds[0]


def test_cityscapes_raw_label_ids_are_mapped(tmp_path: Path) -> None:
    gts = make_cityscapes(tmp_path, [("bonn", "bonn_000000_000019")], raw=True)
    ds = get_dataset("cityscapes", tmp_path / "cityscapes")
    _, _, gt = ds[0]
    raw = gts["bonn_000000_000019"]
    assert np.all(gt[raw == 7] == 0)  # road
    assert np.all(gt[raw == 26] == 13)  # car
    assert np.all(gt[raw == 33] == 18)  # bicycle
    assert np.all(gt[(raw == 0) | (raw == 255) | (raw == 5)] == 255)


def test_missing_cityscapes_and_coco(tmp_path: Path) -> None:
    (tmp_path / "cityscapes/leftImg8bit/val").mkdir(parents=True)
    (tmp_path / "cityscapes/gtFine/val").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        get_dataset("cityscapes", tmp_path)
    (tmp_path / "coco_stuff164k/images/val2017").mkdir(parents=True)
    (tmp_path / "coco_stuff164k/annotations/val2017").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="_instanceTrainIds.png"):
        get_dataset("coco_object", tmp_path)


def test_folder_dataset_with_background(tmp_path: Path) -> None:
    classes = [
        {"id": 0, "name": "background", "color": [0, 0, 0], "synonyms": ["sky", "floor"]},
        {"id": 1, "name": "cell", "color": [128, 0, 0], "synonyms": []},
        {"id": 2, "name": "nucleus", "color": [0, 128, 0], "synonyms": ["nuclei"]},
    ]
    gts = make_folder(tmp_path, classes, n=3)
    ds = get_dataset("folder", tmp_path)
    assert isinstance(ds, FolderDataset)
    assert len(ds) == 3 and ds.num_classes == 3
    assert ds.has_background
    assert ds.classes[0].queries == ("background", "sky", "floor")
    assert ds.classes[2].queries == ("nucleus", "nuclei")
    assert ds.preset.name == "interactive" and not ds.reduce_zero_label
    image_id, image, gt = ds[ds.index_of("img1")]
    assert image_id == "img1"
    np.testing.assert_array_equal(gt, gts["img1"])


def test_folder_export_without_background_words_ignores_label_0(tmp_path: Path) -> None:
    """What the plugin and the CLI export without background words: 0 = unlabelled."""
    classes = [
        {"id": 0, "name": "background", "color": [0, 0, 0], "synonyms": []},
        {"id": 1, "name": "cell", "color": [128, 0, 0], "synonyms": ["cell"]},
        {"id": 2, "name": "nucleus", "color": [0, 128, 0], "synonyms": []},
    ]
    gts = make_folder(tmp_path, classes, n=2)
    ds = get_dataset("folder", tmp_path)
    assert ds.reduce_zero_label and not ds.has_background
    assert [c.name for c in ds.classes] == ["cell", "nucleus"] and ds.num_classes == 2
    _, _, gt = ds[ds.index_of("img0")]
    np.testing.assert_array_equal(gt, _reduced(gts["img0"]))
    assert not type(ds).reduce_zero_label  # the class default is untouched


def test_folder_dataset_errors(tmp_path: Path) -> None:
    classes = [{"id": 0, "name": "cell"}, {"id": 1, "name": "debris"}]
    make_folder(tmp_path, classes, n=2)
    ds = get_dataset("folder", tmp_path)
    assert not ds.has_background
    (tmp_path / "masks" / "img1.png").unlink()
    with pytest.raises(FileNotFoundError, match="masks/img1.png"):
        get_dataset("folder", tmp_path)
    _mask(tmp_path / "masks" / "img1.png", np.zeros((H, W), np.uint8))
    (tmp_path / "classes.json").write_text(json.dumps({"classes": [{"id": 1, "name": "a"}]}))
    with pytest.raises(ValueError, match="ids must be 0, 1, 2"):
        get_dataset("folder", tmp_path)
    (tmp_path / "classes.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        get_dataset("folder", tmp_path)
    (tmp_path / "classes.json").unlink()
    with pytest.raises(FileNotFoundError, match="classes.json"):
        get_dataset("folder", tmp_path)


def test_unknown_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="voc21"):
        get_dataset("imagenet", tmp_path)


def test_root_one_folder_too_high_names_the_root_to_pass(tmp_path: Path) -> None:
    """--root is the dataset folder or a folder of mmseg's layout above it, up to data/;
    one folder higher is not searched, but the error says which --root to pass."""
    make_voc(tmp_path / "data", ["x"])
    assert get_dataset("voc21", tmp_path / "data").root == tmp_path / "data/VOCdevkit/VOC2012"
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("voc21", tmp_path)
    assert f"pass --root {tmp_path / 'data'}" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("voc21", tmp_path / "data" / "VOCdevkit" / "VOC2012" / "JPEGImages")
    assert "pass --root" not in str(err.value)


def test_folder_refuses_two_masks_for_one_image(tmp_path: Path) -> None:
    make_folder(tmp_path, [{"id": 0, "name": "cell"}, {"id": 1, "name": "debris"}], n=2)
    import tifffile

    tifffile.imwrite(tmp_path / "masks" / "img1.tif", np.zeros((H, W), np.uint16))
    with pytest.raises(ValueError) as err:
        get_dataset("folder", tmp_path)
    assert "masks/img1.png and masks/img1.tif" in str(err.value)
    assert "Keep one mask per name" in str(err.value)


def test_benchmark_split_listing_an_id_twice_is_refused(tmp_path: Path) -> None:
    make_voc(tmp_path, ["x", "y"])
    (tmp_path / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").write_text("x\ny\nx\n")
    with pytest.raises(ValueError, match=r"(?s)'x': JPEGImages/x\.jpg, JPEGImages/x\.jpg.*list each id once"):
        get_dataset("voc21", tmp_path)


def test_ade_image_name_twice_is_refused(tmp_path: Path) -> None:
    make_ade(tmp_path, ["a", "b"])
    _image(tmp_path / "ade/ADEChallengeData2016/images/validation/a.png", 5)
    with pytest.raises(ValueError, match="images/validation/a.jpg, images/validation/a.png"):
        get_dataset("ade20k", tmp_path)


def _tiff(path: Path, values: np.ndarray) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, values.astype(np.uint16))


def test_tiff_255_is_a_class_only_beyond_255_classes(tmp_path: Path) -> None:
    values = np.array([[0, 1, 255, 254], [256, 299, 255, 0]])
    # 300 classes, none of them background: 255 is class 255, nothing is ignored.
    big = tmp_path / "big"
    _image(big / "images" / "a.png", 0, size=(2, 4))
    _tiff(big / "masks" / "a.tif", values)
    (big / "classes.json").write_text(json.dumps(
        {"classes": [{"id": i, "name": f"c{i}"} for i in range(300)]}))
    ds = get_dataset("folder", big)
    assert ds.ignore_index == -1 and ds.num_classes == 300
    np.testing.assert_array_equal(ds[0][2], values)
    # 300 entries with a word-less background 0: 0 is unlabelled, 255 becomes class 254.
    (big / "classes.json").write_text(json.dumps(
        {"classes": [{"id": 0, "name": "background", "synonyms": []}]
         + [{"id": i, "name": f"c{i}"} for i in range(1, 300)]}))
    ds = get_dataset("folder", big)
    assert ds.reduce_zero_label and ds.num_classes == 299 and ds.ignore_index == -1
    np.testing.assert_array_equal(ds[0][2], [[-1, 0, 254, 253], [255, 298, 254, -1]])
    # A PNG mask in the same folder keeps 255 = ignore.
    (big / "masks" / "a.tif").unlink()
    _mask(big / "masks" / "a.png", np.array([[0, 1, 255, 254], [2, 3, 255, 0]]))
    np.testing.assert_array_equal(get_dataset("folder", big)[0][2],
                                  [[-1, 0, -1, 253], [1, 2, -1, -1]])
    # Three classes with a TIFF mask: 255 stays "ignore".
    small = tmp_path / "small"
    _image(small / "images" / "a.png", 0, size=(2, 4))
    _tiff(small / "masks" / "a.tif", np.array([[0, 1, 255, 2], [2, 255, 1, 0]]))
    (small / "classes.json").write_text(json.dumps(
        {"classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}, {"id": 2, "name": "c"}]}))
    ds = get_dataset("folder", small)
    assert ds.ignore_index == 255
    np.testing.assert_array_equal(ds[0][2], [[0, 1, 255, 2], [2, 255, 1, 0]])


def test_prescan_of_a_benchmark_checks_headers_not_values(tmp_path: Path) -> None:
    """Benchmarks keep mmseg's convention (a value that is no class counts as unlabelled),
    so only unreadable and mis-sized masks are bad; folders also check the values."""
    from napari_cass.evaluation import scan_dataset

    gts = make_voc(tmp_path, ["x", "y", "z"])
    voc = tmp_path / "VOCdevkit/VOC2012"
    out_of_range = gts["x"].copy()
    out_of_range[3, 3] = 40
    _mask(voc / "SegmentationClass/x.png", out_of_range, palette=True)
    _mask(voc / "SegmentationClass/y.png", np.zeros((H, W + 2), np.uint8))
    (voc / "SegmentationClass/z.png").write_bytes(b"")
    scan = scan_dataset(get_dataset("voc21", tmp_path))
    assert [s.image_id for s in scan.good] == ["x"]
    assert [(b.file, b.reason.split(" (")[0]) for b in scan.bad] == [
        ("SegmentationClass/y.png",
         f"mask is {W + 2}x{H} but its image JPEGImages/y.jpg is {W}x{H}; they must have the same size"),
        ("SegmentationClass/z.png", "mask unreadable"),
    ]
    assert len(scan.gt_digests["x"]["blake2b"]) == 32
    assert scan_dataset(get_dataset("voc21", tmp_path), limit=1).bad == []
