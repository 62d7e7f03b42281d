"""Randomized sequences through the Plugins path: every pixel's class against a model.

Each sequence interleaves what an annotator does: brush strokes, fills, Ctrl+Z
and redo (napari's own), reorder, rename, remove, add and Set in the class
table (real buttons, typed text, Yes/No answers), "Undo last run", prompt
re-runs and region re-runs. After every step each pixel's label value, and
the name the table gives it, must equal a model of what the user did:

* a stroke or fill is the user's (its pixels are edits) until Ctrl+Z takes it
  back; redo brings it back;
* a run writes the engine's answer where no edit is, and starts a new Ctrl+Z
  history (as do "Undo last run" and a class removal);
* reorder, rename and add change no pixel; removing a class unlabels its
  pixels; "Undo last run" restores what the last run changed where nobody
  painted since.

The model keeps its own history and edit flags; it learns nothing from the
plugin but the values the table gives new classes. The segmenter is a fast
deterministic stand-in (a real :class:`~napari_cass.engine.SegmentationResult`
from pixel values and the prompts), injected through ``segmenter_factory``:
the engine is tested elsewhere, the mechanics here.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from napari_cass.engine import SegmentationResult
from napari_cass.plugin._layer_inputs import WHOLE_IMAGE

from _gui_actions import click


def set_classes(qtbot, widget, text: str) -> None:
    """The quick-entry box filled (typing is tested elsewhere), then the real Set button."""
    widget.class_table.text.setPlainText(text)
    click(qtbot, widget.class_table.set_btn)

SEQUENCES = int(os.environ.get("NAPARI_CASS_UNDO_SEQUENCES", "200"))
STEPS = 14
SHAPE = (20, 28)
WAIT = 60_000


class FakeSegmenter:
    """Labels from pixel values and the class names: deterministic, instant, crop-invariant."""

    def __init__(self, method: str, preset: str) -> None:
        self.method, self.preset, self.device = method, SimpleNamespace(name=preset), "cpu"

    def set_method(self, method: str) -> None:
        self.method = method

    def set_preset(self, preset: str) -> None:
        self.preset = SimpleNamespace(name=preset)

    @staticmethod
    def rows(image: np.ndarray, names: list[str]) -> np.ndarray:
        """Row 1..n for every pixel (no background class)."""
        salt = zlib.crc32("|".join(names).encode()) % 97
        return (image[..., 0].astype(np.int64) // 23 + salt) % len(names) + 1

    def segment(self, image, classes, progress=None, cancel=None, background=None, **_):
        names = [c.name for c in classes]
        labels = self.rows(np.asarray(image), names) - 1
        return SegmentationResult(labels=labels.astype(np.int32), probabilities=None,
                                  classes=list(classes),
                                  confidence=np.ones(labels.shape, np.float32))


def fake_factory(clip, vfm, method, preset, device):
    return FakeSegmenter(method, preset)


@dataclass
class Model:
    """What the user did, pixel by pixel: value, whether it is theirs, their history."""

    values: np.ndarray
    edit: np.ndarray
    names: dict[int, str]
    history: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    redo: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    runs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def stroke(self, after: np.ndarray) -> None:
        changed = after != self.values
        if changed.any():
            idx = np.flatnonzero(changed)
            self.history.append((idx, self.values.flat[idx].copy(), self.edit.flat[idx].copy(),
                                 after.flat[idx].copy()))
            self.redo.clear()
            self.values = after.copy()
            self.edit.flat[idx] = True

    def undo(self) -> None:
        if self.history:
            idx, old, old_edit, new = self.history.pop()
            self.redo.append((idx, old, self.edit.flat[idx].copy(), new))
            self.values.flat[idx] = old
            self.edit.flat[idx] = old_edit

    def redo_step(self) -> None:
        if self.redo:
            idx, old, edit_after, new = self.redo.pop()
            self.history.append((idx, old, self.edit.flat[idx].copy(), new))
            self.values.flat[idx] = new
            self.edit.flat[idx] = edit_after

    def checkpoint(self) -> None:
        self.history.clear()
        self.redo.clear()

    def run(self, answer: np.ndarray, where: np.ndarray) -> None:
        write = where & ~self.edit
        changed = write & (answer != self.values)
        self.runs = (self.runs + [(changed.copy(), self.values[changed].copy())])[-2:]
        self.values = np.where(write, answer, self.values)
        self.checkpoint()

    def undo_run(self) -> None:
        changed, before = self.runs.pop()
        prior = np.zeros_like(self.values)
        prior[changed] = before
        restore = changed & ~self.edit & (prior != self.values)
        self.values[restore] = prior[restore]
        self.checkpoint()

    def remove(self, value: int) -> None:
        gone = self.values == value
        self.values[gone] = 0
        self.edit[gone] = False
        self.names.pop(value)
        self.runs = [(c, np.where(b == value, 0, b)) for c, b in self.runs]
        self.checkpoint()


def _table(w):
    return w.class_table.label_classes()


def _check(w, layer, model: Model, step: str) -> None:
    data = np.asarray(layer.data)
    table = _table(w)
    assert dict(zip(table.values, table.names)) == {0: "background", **model.names}, step
    bad = np.argwhere(data != model.values)
    assert bad.size == 0, (f"{step}: {len(bad)} px differ, first at {tuple(bad[0])}: layer "
                           f"{table.name_of(int(data[tuple(bad[0])]))!r}, model "
                           f"{model.names.get(int(model.values[tuple(bad[0])]), 'background')!r}")
    edited = w.sync.state_for(layer).edited(data)
    assert np.array_equal(edited, model.edit), f"{step}: edits differ at {np.argwhere(edited != model.edit)[:3].tolist()}"


def _run(qtbot, w) -> None:
    click(qtbot, w.segment_btn)
    if w.is_running:
        qtbot.waitUntil(lambda: not w.is_running, timeout=WAIT)
    assert not w.errors.is_error, w.errors.message


def _answer_of(w, image, where_names=None) -> np.ndarray:
    table = _table(w)
    rows = FakeSegmenter.rows(image, table.names[1:])
    return np.asarray(table.values)[rows]


def _sequence(qtbot, w, seed: int) -> None:
    from napari_cass.plugin._layer_inputs import region_mask

    rng = np.random.default_rng(seed)
    viewer = w.viewer
    image = rng.integers(0, 256, size=(*SHAPE, 3), dtype=np.uint8)
    if "pic" in viewer.layers:  # one image and one region layer for all sequences (removing
        image_layer = viewer.layers["pic"]  # a layer costs ~0.5 s of GL work under Mesa)
        image_layer.data = image
    else:
        image_layer = viewer.add_image(image, name="pic", rgb=True)
    w.select_image("pic")
    w.region_combo.setCurrentText(WHOLE_IMAGE)
    n_start = int(rng.integers(2, 5))
    words = [f"c{seed}x{k}" for k in range(n_start)]
    set_classes(qtbot, w, ", ".join(words))
    _run(qtbot, w)
    layer = w.labels_layer_for(image_layer)
    table = _table(w)
    model = Model(np.array(layer.data, copy=True), np.zeros(SHAPE, bool),
                  dict(zip(table.values[1:], table.names[1:])))
    np.testing.assert_array_equal(model.values, _answer_of(w, image))
    fresh = [0]
    answers = iter(rng.random(1000) < 0.7)  # "Yes" to 70 % of the questions
    w.confirm = lambda question: bool(next(answers))
    if "region" in viewer.layers:
        shapes = viewer.layers["region"]
    else:
        shapes = viewer.add_shapes([np.array([[3, 4], [3, 15], [12, 15], [12, 4]])],
                                   shape_type="rectangle", name="region")
    w.select_image("pic")
    region = region_mask(shapes, image_layer, SHAPE)

    def new_name() -> str:
        fresh[0] += 1
        return f"n{seed}x{fresh[0]}"

    ops = ["stroke", "stroke", "fill", "undo", "undo", "redo", "reorder", "rename", "remove",
           "add", "set", "undo_run", "run", "region_run"]
    for step in range(STEPS):
        op = str(rng.choice(ops))
        values = [v for v in model.names]
        label = f"seed {seed} step {step} {op}"
        if op in ("stroke", "fill"):
            value = int(rng.choice([0, *values]))
            viewer.layers.selection.active = layer
            if op == "stroke":
                layer.brush_size = int(rng.integers(1, 5))
                for _ in range(int(rng.integers(1, 3))):
                    layer.paint(tuple(int(v) for v in rng.integers((0, 0), SHAPE)), value)
                    model.stroke(np.asarray(layer.data))
            else:
                layer.fill(tuple(int(v) for v in rng.integers((0, 0), SHAPE)), value)
                model.stroke(np.asarray(layer.data))
        elif op == "undo":
            layer.undo()
            model.undo()
        elif op == "redo":
            layer.redo()
            model.redo_step()
        elif op == "reorder" and len(values) > 1:
            row = int(rng.integers(1, len(values) + 1))
            w.class_table.table.setCurrentCell(row, 1)
            click(qtbot, w.class_table.up_btn if rng.random() < 0.5 else w.class_table.down_btn)
        elif op == "rename":
            row = int(rng.integers(1, len(values) + 1))
            value = _table(w).values[row]
            name = new_name()
            w.class_table.table.item(row, 1).setText(name)
            model.names[value] = name
        elif op == "remove" and len(values) > 1:
            row = int(rng.integers(1, len(values) + 1))
            value = _table(w).values[row]
            asked = bool((model.edit & (model.values == value)).any())
            w.class_table.table.setCurrentCell(row, 1)
            peek = iter([])
            if asked:
                answer = next(answers)
                peek = iter([answer])
                w.confirm = lambda q, it=peek: bool(next(it))
            click(qtbot, w.class_table.remove_btn)
            w.confirm = lambda question: bool(next(answers))
            if not asked or answer:
                model.remove(value)
            qtbot.wait(5)  # a refused edit puts the table back on the next tick
        elif op == "add":
            click(qtbot, w.class_table.add_btn)
            table = _table(w)
            model.names[table.values[-1]] = table.names[-1]
        elif op == "set":
            keep = [model.names[v] for v in values if rng.random() < 0.6] or [model.names[values[0]]]
            added = [new_name() for _ in range(int(rng.integers(0, 2)))]
            typed = list(rng.permutation(keep + added))
            gone = [v for v in values if model.names[v] not in typed]
            asked = bool((model.edit & np.isin(model.values, gone)).any())
            answer = next(answers) if asked else True
            it = iter([answer])
            w.confirm = lambda q, it=it: bool(next(it))
            set_classes(qtbot, w, ", ".join(typed))
            w.confirm = lambda question: bool(next(answers))
            qtbot.wait(5)
            if answer:
                for v in gone:
                    model.remove(v)
                table = _table(w)
                for v, n in zip(table.values[1:], table.names[1:]):
                    if n in added:
                        model.names[v] = n
        elif op == "undo_run":
            click(qtbot, w.undo_btn)
            if model.runs:
                model.undo_run()
        elif op in ("run", "region_run"):
            w.region_combo.setCurrentText("region" if op == "region_run" else WHOLE_IMAGE)
            answer = _answer_of(w, image)
            _run(qtbot, w)
            model.run(answer, region if op == "region_run" else np.ones(SHAPE, bool))
            w.region_combo.setCurrentText(WHOLE_IMAGE)
        _check(w, layer, model, label)
    viewer.layers.remove(layer)  # the next sequence starts a fresh labels layer
    qtbot.wait(5)


@pytest.mark.parametrize("block", range(4))
def test_random_sequences_keep_every_pixel_class(qtbot, plugin, block: int) -> None:
    """Blocks 0-1 run segmentations in the worker thread as the GUI does; blocks 2-3
    synchronously (the same merge code, minus the thread hop), to keep the suite short."""
    plugin.segmenter_factory = fake_factory
    plugin.run_in_thread = block < 2
    plugin.viewer.window.resize(700, 500)  # a smaller canvas: cheaper redraws under Mesa
    per_block = -(-SEQUENCES // 4)
    for seed in range(block * per_block, min((block + 1) * per_block, SEQUENCES)):
        _sequence(qtbot, plugin, seed)
