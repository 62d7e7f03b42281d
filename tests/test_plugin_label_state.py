"""The Qt-free label state: the stroke log that follows napari's Ctrl+Z, checkpoints, merges.

Strokes are applied with napari's own Labels layer (its public ``paint``,
``fill``, ``undo`` and ``redo``), so the atoms are exactly what napari emits.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels

from napari_cass.plugin._label_state import LabelState, prepare_merge
from napari_cass.plugin._stroke_log import stroke_from_atoms


def _layer_with_state(first: np.ndarray) -> tuple[Labels, LabelState]:
    layer = Labels(first.copy())
    state = LabelState(first)
    layer.events.paint.connect(lambda e: state.record_paint(e.value, layer.data))
    layer.events.set_data.connect(lambda e: state.sync(layer.data))  # as the plugin listens
    layer.brush_size = 1
    return layer, state


def _run(state: LabelState, layer: Labels, raw: np.ndarray, where=None, replace_all=False) -> np.ndarray:
    where = np.ones(raw.shape, bool) if where is None else where
    start = state.begin_run(np.asarray(layer.data), replace_all)
    plan = prepare_merge(start, raw, where)
    merged = state.finish_run(np.asarray(layer.data), start, plan)
    layer.data = merged
    return merged


def test_paint_atoms_become_one_stroke_with_first_old_and_last_new() -> None:
    layer = Labels(np.zeros((5, 5), np.uint8))
    seen = []
    layer.events.paint.connect(lambda e: seen.append(e.value))
    layer.brush_size = 1
    layer.paint((1, 1), 3)
    layer.data_setitem((np.array([1, 2]), np.array([1, 2])), 4)
    first = stroke_from_atoms(seen[0], (5, 5))
    second = stroke_from_atoms(seen[1], (5, 5))
    assert first.idx.tolist() == [6] and first.old.tolist() == [0] and first.new.tolist() == [3]
    assert second.idx.tolist() == [6, 12] and second.old.tolist() == [3, 0]
    assert second.new.tolist() == [4, 4]


def test_painting_the_engine_value_back_is_an_edit_until_undone() -> None:
    """e -> x -> e: the pixel holds the checkpoint's value but a stroke put it there."""
    first = np.full((4, 4), 1, np.uint8)
    layer, state = _layer_with_state(first)
    layer.data_setitem((np.array([2, 2]), np.array([2, 3])), 5)
    layer.paint((2, 2), 1)  # back to the engine's class, by hand (one of the two pixels)
    assert state.edited(layer.data)[2, 2]
    layer.undo()  # 5 again: still an edit
    assert layer.data[2, 2] == 5 and state.edited(layer.data)[2, 2]
    layer.undo()  # both strokes undone: the engine's pixels again
    assert layer.data[2, 2] == 1 and not state.edited(layer.data)[2:3, 2:4].any()
    layer.redo()
    layer.redo()
    assert layer.data[2, 2] == 1 and state.edited(layer.data)[2, 2]


def test_exact_inverse_stroke_then_undo_keeps_the_pixels_as_edits() -> None:
    """A stroke and its exact inverse: Ctrl+Z and redo would show the same pixels.

    The data cannot tell them apart; the plugin then keeps the pixels as the
    annotator's (a re-run never overwrites them), and the next step that tells
    them apart puts the log right.
    """
    first = np.full((4, 4), 1, np.uint8)
    layer, state = _layer_with_state(first)
    layer.paint((2, 2), 5)
    layer.paint((2, 2), 1)  # the exact inverse
    layer.undo()
    layer.undo()  # looks exactly like a redo of the inverse
    assert layer.data[2, 2] == 1 and state.edited(layer.data)[2, 2]
    layer.redo()  # 5 again: only one history fits
    assert layer.data[2, 2] == 5 and state.edited(layer.data)[2, 2]
    assert len(state.log.applied) == 1 and len(state.log.undone) == 1


def test_a_new_stroke_after_undo_drops_the_redo_list() -> None:
    first = np.zeros((4, 6), np.uint8)
    layer, state = _layer_with_state(first)
    layer.paint((1, 1), 2)
    layer.paint((1, 4), 3)
    layer.undo()  # (1, 4) goes back to 0
    layer.paint((3, 3), 4)  # napari forgets the undone stroke
    edited = state.edited(layer.data)
    assert edited[1, 1] and edited[3, 3] and not edited[1, 4]
    assert len(state.log.undone) == 0 and len(state.log.applied) == 2


def test_run_keeps_edits_and_patches_strokes_made_during_it() -> None:
    first = np.ones((6, 6), np.uint8)
    layer, state = _layer_with_state(first)
    layer.paint((0, 0), 3)
    raw = np.full((6, 6), 4, np.uint8)
    start = state.begin_run(np.asarray(layer.data), False)
    plan = prepare_merge(start, raw, np.ones(raw.shape, bool))
    layer.paint((5, 5), 2)  # painted while the worker merged
    layer.undo()
    layer.undo()  # ... and the pre-run stroke undone too, during the run
    merged = state.finish_run(np.asarray(layer.data), start, plan)
    np.testing.assert_array_equal(merged, raw)  # no edit is left: every pixel is the run's
    layer.data = merged
    assert not state.edited(layer.data).any()


def test_undo_run_restores_only_what_the_run_changed_and_nobody_painted() -> None:
    first = np.ones((6, 6), np.uint8)
    layer, state = _layer_with_state(first)
    raw = np.full((6, 6), 4, np.uint8)
    raw[0] = 1
    _run(state, layer, raw)
    state.runs[-1].result()  # packed in the background
    layer.paint((3, 3), 7)  # after the run: the annotator's
    idx, values, edited = state.plan_undo(np.asarray(layer.data))
    flat = np.asarray(layer.data).reshape(-1)
    flat[idx] = values
    expected = np.ones((6, 6), np.uint8)
    expected[3, 3] = 7
    np.testing.assert_array_equal(layer.data, expected)
    assert len(idx) == 6 * 5 - 1  # row 0 never changed; (3, 3) is painted
    assert edited[3, 3] and edited.sum() == 1
    assert state.plan_undo(np.asarray(layer.data)) is None


def test_region_and_replace_all() -> None:
    first = np.ones((4, 4), np.uint8)
    layer, state = _layer_with_state(first)
    layer.paint((0, 0), 5)
    where = np.zeros((4, 4), bool)
    where[:, :2] = True
    merged = _run(state, layer, np.full((4, 4), 2, np.uint8), where)
    expected = np.ones((4, 4), np.uint8)
    expected[:, :2] = 2
    expected[0, 0] = 5
    np.testing.assert_array_equal(merged, expected)
    merged = _run(state, layer, np.full((4, 4), 3, np.uint8), replace_all=True)
    np.testing.assert_array_equal(merged, np.full((4, 4), 3))


def test_a_plain_layer_counts_every_labelled_pixel_as_an_edit() -> None:
    drawn = np.zeros((3, 3), np.uint8)
    drawn[1, 1] = 9
    state = LabelState(drawn, all_edits=True)
    assert state.edited(drawn).sum() == 1 and state.edited(drawn)[1, 1]


def test_forget_values_keeps_snapshots_free_of_removed_classes() -> None:
    first = np.full((2, 2), 3, np.uint8)
    layer, state = _layer_with_state(first)
    _run(state, layer, np.full((2, 2), 4, np.uint8))
    state.forget_values([3])
    idx, values, _ = state.plan_undo(np.asarray(layer.data))
    assert len(idx) == 4 and (values == 0).all()
