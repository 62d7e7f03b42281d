"""Class prompt syntax, class files, benchmark lists and presets."""

import json

import pytest

from napari_cass.engine import (
    BENCHMARK_CLASS_LISTS,
    PRESETS,
    ClassPrompt,
    benchmark_classes,
    get_preset,
    load_class_file,
    normalize_classes,
    parse_classes,
)


def test_one_line_is_comma_separated_classes_with_pipe_synonyms():
    p = parse_classes("person | man | woman, bicycle,  road ")
    assert [c.name for c in p] == ["person", "bicycle", "road"]
    assert p[0].queries == ("person", "man", "woman")


def test_several_lines_are_one_class_per_line_with_synonyms():
    p = parse_classes("# comment\nperson, man\n\ntree\n")
    assert [c.name for c in p] == ["person", "tree"]
    assert p[0].queries == ("person", "man")


@pytest.mark.parametrize("bad", ["", "  \n # only a comment", [], ["cat", ""], [[" ", ""]]])
def test_empty_class_lists_are_refused(bad):
    with pytest.raises(ValueError, match="empty"):
        normalize_classes(bad)


def test_duplicates_are_refused_with_the_names():
    with pytest.raises(ValueError, match="Duplicate class 'Cat'"):
        normalize_classes(["cat", "Cat"])
    with pytest.raises(ValueError, match="'kitty'"):
        normalize_classes([["cat", "kitty"], ["dog", "kitty"]])


def test_class_files_text_and_json(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("cat, kitty\ndog\n")
    assert [c.queries for c in load_class_file(txt)] == [("cat", "kitty"), ("dog",)]
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"classes": [{"id": 0, "name": "cat", "synonyms": ["kitty"]}, {"id": 1, "name": "dog"}]}))
    assert [c.queries for c in load_class_file(js)] == [("cat", "kitty"), ("dog",)]
    js.write_text(json.dumps(["a", ["b", "bee"]]))
    assert [c.name for c in load_class_file(js)] == ["a", "b"]
    with pytest.raises(FileNotFoundError):
        load_class_file(tmp_path / "missing.txt")
    js.write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_class_file(js)


def test_benchmark_lists():
    sizes = {"voc20": 20, "voc21": 21, "context59": 59, "context60": 60, "coco_object": 81,
             "coco_stuff": 171, "ade20k": 150, "cityscapes": 19}
    for name in BENCHMARK_CLASS_LISTS:
        assert len(benchmark_classes(name)) == sizes[name], name
    voc21 = benchmark_classes("voc21")
    assert voc21[0].name == "background" and len(voc21[0].queries) == 26
    person = benchmark_classes("voc20")[14]
    assert person.queries[0] == "person" and "person in jacket" in person.queries
    assert benchmark_classes("voc20")[3].name == "ship"
    # benchmark lists may reuse a word across classes (COCO-Object's background "bed")
    assert len(normalize_classes(benchmark_classes("coco_object"))) == 81


def test_presets_table():
    assert set(PRESETS) >= {"voc20", "voc21", "context59", "context60", "coco_object", "coco_stuff",
                            "ade20k", "cityscapes", "interactive"}
    assert get_preset("voc21").mode == "whole" and get_preset("voc21").prob_thd == 0.1
    assert not get_preset("voc20").eigenscaling and not get_preset("cityscapes").eigenscaling
    assert get_preset("cityscapes").short_side == 560 and get_preset("cityscapes").prior_from_crop
    assert get_preset("interactive").beta == get_preset("context59").beta
    with pytest.raises(ValueError, match="Unknown preset"):
        get_preset("nope")
    assert isinstance(ClassPrompt.from_words(["a"]), ClassPrompt)


def test_background_words_may_not_be_class_words():
    from napari_cass.engine._prompts import with_background

    prompts = with_background("cat | kitten, dog", "sky, wall")
    assert [p.name for p in prompts] == ["background", "cat", "dog"]
    assert prompts[0].queries == ("sky", "wall")
    assert with_background("cat", None) == normalize_classes("cat")
    with pytest.raises(ValueError, match="background word 'Kitten' is also the class 'cat'"):
        with_background("cat | kitten, dog", ["sky", "Kitten"])
    with pytest.raises(ValueError, match="reserved for class 0"):
        with_background("cat, background", None)
    with pytest.raises(ValueError, match="already has a background class"):
        with_background([ClassPrompt("background", ("sky",)), ClassPrompt("cat", ("cat",))], "wall")


def test_classes_json_row_zero_is_label_zero(tmp_path):
    js = tmp_path / "classes.json"
    table = {"format": "napari-cass/classes@1", "has_background": False, "classes": [
        {"id": 0, "name": "background", "color": [0, 0, 0], "synonyms": []},
        {"id": 1, "name": "cat", "color": [128, 0, 0], "synonyms": ["cat", "kitten"]},
        {"id": 2, "name": "dog", "color": [0, 128, 0], "synonyms": ["puppy"]}]}
    js.write_text(json.dumps(table))
    prompts = load_class_file(js)  # the word-less background row is no class
    assert [(p.name, p.queries) for p in prompts] == [("cat", ("cat", "kitten")), ("dog", ("dog", "puppy"))]
    table["classes"][0]["synonyms"] = ["sky", "wall"]
    table["has_background"] = True
    js.write_text(json.dumps(table))
    prompts = load_class_file(js)
    assert [(p.name, p.queries) for p in prompts][0] == ("background", ("sky", "wall"))
    table["classes"][0]["synonyms"] = ["sky", "dog"]
    js.write_text(json.dumps(table))
    with pytest.raises(ValueError, match="background word 'dog' is also the class 'dog'"):
        load_class_file(js)


def test_class_file_encoding_is_named(tmp_path):
    txt = tmp_path / "classes.txt"
    txt.write_bytes("chat\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"classes.txt is not UTF-8 text.*Save it as UTF-8"):
        load_class_file(txt)
    txt.write_bytes(b"\xef\xbb\xbfcat\ndog\n")  # UTF-8 with a byte-order mark
    assert [p.name for p in load_class_file(txt)] == ["cat", "dog"]
    with pytest.raises(IsADirectoryError, match="is a folder"):
        load_class_file(tmp_path)
