"""The Qt-free label state: edits from paint atoms and diffs, run undo, class remaps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from napari_cass.plugin._classes import LabelClasses
from napari_cass.plugin._label_state import LabelState, class_lut, merge_labels


def _atom(slice_key, mask, value):
    """A napari 0.9 masked paint atom (same public fields)."""
    return SimpleNamespace(slice_key=slice_key, mask=mask, old_values=None, new_value=value)


def _run(state: LabelState, data: np.ndarray, new: np.ndarray, replace_all=False) -> np.ndarray:
    merged, written = state.plan_run(data, new, None, replace_all)
    state.commit_run(data, new, written, replace_all)
    return merged


def test_edits_from_events_and_diff_survive_a_run() -> None:
    first = np.ones((6, 6), np.uint8)
    state = LabelState(first)
    data = first.copy()
    data[0, 0:2] = 3  # a brush stroke, reported by its atom
    state.record_paint([_atom((slice(0, 1), slice(0, 2)), None, 3)])
    data[5, 5] = 2  # a change no event reported
    data[2, 2] = 1  # a stroke that painted the engine's own class (reported)
    state.record_paint([((np.array([2]), np.array([2])), np.array([1]), 1)])
    new = np.full((6, 6), 4, np.uint8)
    merged = _run(state, data, new)
    expected = new.copy()
    expected[0, 0:2] = 3
    expected[5, 5] = 2
    expected[2, 2] = 1
    np.testing.assert_array_equal(merged, expected)


def test_undone_stroke_is_not_an_edit_and_redo_is() -> None:
    first = np.ones((4, 4), np.uint8)
    state = LabelState(first)
    state.record_paint([_atom((slice(1, 2), slice(1, 3)), None, 2)])
    undone = first.copy()  # napari's Ctrl+Z put the engine values back (no paint event)
    assert not state.edited(undone).any()
    redone = first.copy()
    redone[1, 1:3] = 2
    np.testing.assert_array_equal(np.argwhere(state.edited(redone)), [[1, 1], [1, 2]])


def test_undo_run_keeps_later_strokes_and_ctrl_z_of_a_run_is_noticed() -> None:
    first = np.zeros((4, 4), np.uint8)
    state = LabelState(first)
    new = np.full((4, 4), 2, np.uint8)
    after = _run(state, first, new)
    after[3, 3] = 1  # painted after the run
    state.record_paint([((np.array([3]), np.array([3])), np.array([2]), 1)])
    indices, values = state.undo_run(after)
    after[indices] = values
    expected = first.copy()
    expected[3, 3] = 1
    np.testing.assert_array_equal(after, expected)
    assert not state.can_undo

    # a run taken back by napari's Ctrl+Z: the next run must not keep its old pixels
    data = _run(state, after, new)
    data[...] = after  # what Ctrl+Z restores
    assert state.forget_undone_run(data)
    np.testing.assert_array_equal(state.edited(data), after == 1)


def test_class_remap_by_id() -> None:
    old = LabelClasses.from_names(["cat", "dog", "grass"])
    old.ids = [0, 11, 12, 13]
    new = LabelClasses.from_names(["dog", "grass"])  # cat removed, dog moved up
    new.ids = [0, 12, 13]
    lut = class_lut(old, new, 4, np.uint8)
    assert lut.size == 256 and lut[:4].tolist() == [0, 0, 1, 2]
    state = LabelState(np.array([[1, 2, 3]], np.uint8), old)
    state.record_paint([((np.array([0]), np.array([0])), np.array([2]), 1)])  # a painted cat
    state.remap(lut, new)
    np.testing.assert_array_equal(state.last_output, [[0, 1, 2]])
    assert not state.painted[0, 0]  # its class is gone: unlabelled, free for the next run
    assert class_lut(new, new, 3, np.uint8) is None


def test_merge_region_and_replace_all() -> None:
    cur = np.zeros((3, 3), np.uint8)
    new = np.full((3, 3), 5, np.uint8)
    edited = np.zeros((3, 3), bool)
    edited[0, 0] = True
    region = np.zeros((3, 3), bool)
    region[:2, :2] = True
    merged, written = merge_labels(cur, new, edited, region)
    assert written.sum() == 3 and merged[0, 0] == 0 and merged[2, 2] == 0
    merged, written = merge_labels(cur, new, None, None)
    assert written.all() and (merged == 5).all()
