"""Metrics (mmseg IoUMetric definition) and the paper-number lookups."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_cass.evaluation import (
    PAPER_AVERAGE_MIOU,
    PAPER_TABLE1_MIOU,
    IoUAccumulator,
    intersect_and_union,
    paper_miou,
    table3_row,
)


def test_hand_computed_case() -> None:
    gt = np.array([[0, 0, 1, 1],
                   [0, 2, 2, 255]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 2, 0, 2]])
    inter, union, p_area, l_area = intersect_and_union(pred, gt, num_classes=4)
    # valid pixels: all but the 255 one. class 0: gt {(0,0),(0,1),(1,0)}, pred {(0,0),(1,0),(1,2)}
    np.testing.assert_array_equal(inter, [2, 2, 1, 0])
    np.testing.assert_array_equal(p_area, [3, 3, 1, 0])
    np.testing.assert_array_equal(l_area, [3, 2, 2, 0])
    np.testing.assert_array_equal(union, [4, 3, 2, 0])
    acc = IoUAccumulator(4)
    acc.update(pred, gt)
    iou = acc.per_class_iou
    np.testing.assert_allclose(iou[:3], [2 / 4, 2 / 3, 1 / 2])
    assert math.isnan(iou[3])  # class 3 absent from both: excluded from the mean
    assert acc.miou == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert acc.pacc == pytest.approx(5 / 7)
    assert acc.macc == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)


def test_counts_are_summed_before_dividing() -> None:
    # Image 1: class 1 perfect on 1 pixel; image 2: class 1 wrong on 3 pixels.
    acc = IoUAccumulator(2)
    acc.update(np.array([[1, 0]]), np.array([[1, 0]]))
    acc.update(np.array([[0, 0, 0]]), np.array([[1, 1, 1]]))
    # dataset-level IoU_1 = 1 / 4, not the mean of per-image IoUs (1 and 0)
    assert acc.per_class_iou[1] == pytest.approx(1 / 4)
    assert acc.per_class_iou[0] == pytest.approx(1 / 4)
    assert acc.num_images == 2


def test_against_direct_numpy_on_random_maps() -> None:
    rng = np.random.default_rng(7)
    c = 6
    acc = IoUAccumulator(c)
    preds, gts = [], []
    for _ in range(5):
        shape = tuple(rng.integers(5, 40, size=2))
        gt = rng.integers(0, c - 1, shape)  # class c-1 never in the truth
        gt[rng.random(shape) < 0.1] = 255
        pred = rng.integers(0, c - 2, shape)  # classes c-2, c-1 never predicted
        acc.update(pred, gt)
        preds.append(pred.ravel())
        gts.append(gt.ravel())
    p, g = np.concatenate(preds), np.concatenate(gts)
    valid = g != 255
    ious = []
    for k in range(c):
        inter = np.sum((p == k) & (g == k) & valid)
        union = np.sum(((p == k) | (g == k)) & valid)
        ious.append(inter / union if union else np.nan)
    np.testing.assert_allclose(acc.per_class_iou, ious, equal_nan=True)
    assert math.isnan(acc.per_class_iou[c - 1])
    assert acc.miou == pytest.approx(np.nanmean(ious))
    assert acc.pacc == pytest.approx(np.mean(p[valid] == g[valid]))


def test_ground_truth_outside_the_classes_follows_mmseg() -> None:
    # mmseg's histogram drops a label >= num_classes from the label area, but the
    # prediction at that pixel still counts in the prediction area (and the union).
    inter, union, p_area, l_area = intersect_and_union(
        np.array([[1, 1]]), np.array([[1, 9]]), num_classes=2
    )
    np.testing.assert_array_equal(inter, [0, 1])
    np.testing.assert_array_equal(p_area, [0, 2])
    np.testing.assert_array_equal(l_area, [0, 1])
    np.testing.assert_array_equal(union, [0, 2])


def test_bad_inputs() -> None:
    acc = IoUAccumulator(3)
    with pytest.raises(ValueError, match="shape"):
        acc.update(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="integer"):
        acc.update(np.zeros((2, 2), float), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="outside 0..2"):
        acc.update(np.full((2, 2), 3), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="at least 1"):
        IoUAccumulator(0)
    with pytest.raises(ValueError, match="another class list"):
        acc.add_counts([1, 2], [1, 2], [1, 2], [1, 2])
    assert acc.num_images == 0  # nothing was added by the failed calls
    empty = IoUAccumulator(2)
    assert math.isnan(empty.miou) and math.isnan(empty.pacc)
    # Every pixel ignored: no labelled pixel, nothing counted.
    empty.update(np.zeros((2, 2), int), np.full((2, 2), 255))
    assert int(empty.union.sum()) == 0 and math.isnan(empty.pacc)


def test_state_round_trip_through_json() -> None:
    rng = np.random.default_rng(1)
    acc = IoUAccumulator(4)
    for _ in range(3):
        acc.update(rng.integers(0, 4, (8, 9)), rng.integers(0, 4, (8, 9)))
    state = json.loads(json.dumps(acc.state_dict()))
    back = IoUAccumulator.from_state(state)
    for key in ("intersect", "union", "pred_area", "label_area"):
        np.testing.assert_array_equal(getattr(back, key), getattr(acc, key))
    assert back.num_images == 3 and back.miou == acc.miou
    # resuming: adding the same image to both keeps them equal
    pred, gt = rng.integers(0, 4, (5, 5)), rng.integers(0, 4, (5, 5))
    acc.update(pred, gt)
    back.update(pred, gt)
    assert back.miou == acc.miou and back.pacc == acc.pacc
    with pytest.raises(ValueError, match="Not an IoUAccumulator state"):
        IoUAccumulator.from_state({"num_classes": 4})
    bad = acc.state_dict()
    bad["union"] = [1, 2]
    with pytest.raises(ValueError, match="shape"):
        IoUAccumulator.from_state(bad)


def test_paper_lookup() -> None:
    assert paper_miou("voc21") == (65.8, "Table 1")
    assert paper_miou("ade20k")[0] == 20.4
    # 44.35 from the rounded columns; the paper averages unrounded values
    assert sum(PAPER_TABLE1_MIOU.values()) / 8 == pytest.approx(PAPER_AVERAGE_MIOU, abs=0.06)
    # Table 3 rows (cumulative ablations)
    assert paper_miou("context59", ablations={"no-ota"})[0] == 39.6
    assert paper_miou("coco_stuff", ablations={"no-ops", "no-ota"})[0] == 25.9
    seq = {"no-matching", "no-low-rank", "no-eigenscaling", "no-ops", "no-ota"}
    assert paper_miou("voc21", ablations=seq)[0] == 62.5
    assert paper_miou("voc21", ablations={"no-vfm", "no-ops", "no-ota"})[0] == 58.9
    # no-vfm makes the graph switches irrelevant: still the vanilla row
    assert table3_row({"no-vfm", "no-ops", "no-ota", "no-matching"}) == "vanilla (CLIP only)"
    # Not in Table 3: a combination that is not a row, or a dataset Table 3 lacks
    value, why = paper_miou("voc21", ablations={"no-matching"})
    assert value is None and "not a row" in why
    value, why = paper_miou("ade20k", ablations={"no-ota"})
    assert value is None and "Table 3 covers" in why
    # Other backbones (Table 4), other methods, other presets, folders: no figure
    value, why = paper_miou("voc21", clip="ViT-L-14")
    assert value is None and "not listed" in why
    assert paper_miou("voc21", method="sclip")[0] is None
    assert paper_miou("voc21", preset="interactive")[0] is None
    assert paper_miou("folder") == (None, "not a paper benchmark")


def test_ignore_index_minus_one_counts_class_255() -> None:
    """With more than 255 classes the ignore value is -1 and 255 is an ordinary class."""
    gt = np.array([[255, 255, -1, 3]])
    pred = np.array([[255, 3, 255, 3]])
    inter, union, p_area, l_area = intersect_and_union(pred, gt, num_classes=300, ignore_index=-1)
    assert (inter[255], p_area[255], l_area[255], union[255]) == (1, 1, 2, 2)
    assert (inter[3], p_area[3], l_area[3], union[3]) == (1, 2, 1, 2)
    acc = IoUAccumulator(300, ignore_index=-1)
    acc.update(pred, gt)
    assert acc.miou == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert acc.pacc == pytest.approx(2 / 3)
    # With the default ignore value 255 those pixels would not count at all.
    assert intersect_and_union(pred, gt.clip(0), num_classes=300)[3][255] == 0
