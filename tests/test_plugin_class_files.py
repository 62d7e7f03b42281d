"""The class table reads a CLI ``classes.json`` exactly as the CLI does.

A ``classes.json`` is written the way ``napari-cass segment`` writes it
(:class:`napari_cass.io.RunClasses` + ``write_classes_json`` with ``has_background``,
as ``start_run`` does), loaded into the widget's class table, and the engine prompts
the widget would send are compared with the CLI's own ``--classes-file`` reading.
"""

from __future__ import annotations

import argparse
import json

import pytest

from napari_cass.plugin._class_table import ClassTable
from napari_cass.cli._segment import _class_prompts
from napari_cass.engine import ClassPrompt, parse_classes
from napari_cass.engine._prompts import with_background
from napari_cass.io import RunClasses, write_classes_json


def cli_classes_json(path, typed: str, background: str | None):
    """``classes.json`` as the CLI writes it for ``--classes typed [--background ...]``."""
    prompts = with_background(parse_classes(typed), background)
    classes = RunClasses.from_prompts(prompts)
    write_classes_json(path, list(classes.names), classes.colors, [list(w) for w in classes.words],
                       extra={"has_background": classes.has_background})
    return classes


def cli_reads(path) -> list[ClassPrompt]:
    """What ``napari-cass segment --classes-file path`` asks the engine."""
    return _class_prompts(argparse.Namespace(classes_file=path, classes=None, background=None))


def widget_asks(table: ClassTable) -> list[ClassPrompt]:
    """What the widget asks the engine: the background class (if any) first, as the CLI."""
    lc = table.label_classes()
    return with_background(lc.prompts(), lc.background())


@pytest.mark.parametrize("background", [None, "sky, wall"])
def test_cli_classes_json_gives_the_cli_queries(qtbot, tmp_path, background) -> None:
    path = tmp_path / "classes.json"
    written = cli_classes_json(path, "person | man, car, road | street", background)
    table = ClassTable()
    qtbot.addWidget(table)
    table.load_file(path)

    assert widget_asks(table) == cli_reads(path)
    lc = table.label_classes()
    assert lc.names == ["background", "person", "car", "road"]
    assert lc.synonyms[1:] == [["man"], [], ["street"]]  # the name is not repeated among its words
    assert lc.prompts()[0] == ClassPrompt("person", ("person", "man"))
    assert lc.background() == (None if background is None else ["sky", "wall"])
    assert lc.colors.tolist() == written.colors.tolist()


def test_json_without_background_row_and_word_less_background(qtbot, tmp_path) -> None:
    # A table whose row 0 is a class (no background row): label 0 is added, colours shift.
    path = tmp_path / "plain.json"
    write_classes_json(path, ["cat", "dog"], [[1, 2, 3], [4, 5, 6]], [["cat", "kitten"], ["dog"]])
    table = ClassTable()
    qtbot.addWidget(table)
    table.load_file(path)
    lc = table.label_classes()
    assert lc.names == ["background", "cat", "dog"] and lc.background() is None
    assert lc.colors.tolist()[1:] == [[1, 2, 3], [4, 5, 6]]
    assert widget_asks(table) == cli_reads(path)

    # Row 0 "background" with no words (the widget's own export of a run without background).
    path = tmp_path / "wordless.json"
    write_classes_json(path, ["background", "cat"], [[0, 0, 0], [9, 9, 9]], [[], ["cat"]])
    table.load_file(path)
    assert table.label_classes().background() is None
    assert widget_asks(table) == cli_reads(path) == [ClassPrompt("cat", ("cat",))]


def test_has_background_false_and_repeated_words(qtbot, tmp_path) -> None:
    """The corner cases ``class_words`` settles: row 0 words with ``has_background: false``
    are no background class, and a word listed twice is asked once."""
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"has_background": False, "classes": [
        {"id": 0, "name": "background", "color": [0, 0, 0], "synonyms": ["sky"]},
        {"id": 1, "name": "person", "color": [1, 1, 1], "synonyms": ["person", "man", "man"]},
    ]}))
    table = ClassTable()
    qtbot.addWidget(table)
    table.load_file(path)
    lc = table.label_classes()
    assert lc.background() is None and lc.synonyms[1] == ["man"]
    assert widget_asks(table) == cli_reads(path) == [ClassPrompt("person", ("person", "man"))]


def test_benchmark_lists_can_be_run_from_the_widget(qtbot) -> None:
    """COCO-Object's background reuses the class "bed": the widget drops it from the
    background words (a run would refuse it); VOC's background is kept whole."""
    from napari_cass.engine import benchmark_classes

    table = ClassTable()
    qtbot.addWidget(table)
    table.load_benchmark("coco_object")
    lc = table.label_classes()
    assert "bed" in lc.names and "bed" not in lc.background_words
    full = benchmark_classes("coco_object")[0].queries
    assert lc.background_words == [w for w in full if w != "bed"]
    assert len(lc.prompts()) == len(lc.names) - 1  # accepted
    table.load_benchmark("voc21")
    assert table.label_classes().background_words == list(benchmark_classes("voc21")[0].queries)
    table.background_edit.setText("sky, bird")  # "bird" is a VOC class
    with pytest.raises(ValueError, match="'bird' is also the class 'bird'"):
        table.label_classes().prompts()
