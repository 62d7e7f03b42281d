"""Review regressions for run folders: what ``classes.json`` records, and when a run resumes.

Tiny random-weight models (``napari_cass.engine.testing``): the masks are meaningless,
the tests check which files are written, what is recorded, and what is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_cass import cli
from napari_cass.cli import _segment as segment_command
from napari_cass.io import plan_outputs, read_classes_json


@pytest.fixture(scope="module")
def tiny() -> tuple:
    from napari_cass.engine.testing import tiny_models

    return tiny_models()


@pytest.fixture()
def builds(tiny: tuple, monkeypatch: pytest.MonkeyPatch) -> list:
    """Local model loading replaced by tiny random models; records every build."""
    from napari_cass.engine import Segmenter

    built: list = []

    def build(args):
        built.append(args)
        return Segmenter.from_models(*tiny, method=args.method, preset=args.preset, device="cpu")

    monkeypatch.setattr(segment_command, "build_segmenter", build)
    return built


def _images(folder: Path, names=("street", "grey")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        Image.fromarray(rng.integers(0, 255, (30 + 2 * i, 34, 3), dtype=np.uint8)).save(folder / f"{name}.png")


# ------------------------------------------------------------------ sources in classes.json
def test_classes_json_records_sources_relative_to_the_output_folder(tmp_path, builds, monkeypatch, capsys):
    """No absolute path of the user's disk in a folder that gets shared; moved folders resume."""
    project = tmp_path / "project"
    _images(project / "photos")
    monkeypatch.chdir(project)  # relative arguments, as typed in a shell
    assert cli.main(["segment", "photos", "--classes", "cat", "--out", "masks"]) == 0
    text = (project / "masks" / "classes.json").read_text(encoding="utf-8")
    assert str(tmp_path) not in text
    assert json.loads(text)["images"] == {"grey": "../photos/grey.png", "street": "../photos/street.png"}
    assert len(builds) == 1

    # The project moves (another disk, another user's copy); run from elsewhere: all done.
    moved = tmp_path / "elsewhere" / "copy"
    moved.parent.mkdir()
    shutil.move(str(project), str(moved))  # keeps modification times, as mv does
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["segment", str(moved / "photos"), "--classes", "cat", "--out", str(moved / "masks")]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len(builds) == 1  # no models loaded: nothing was redone

    # A new image in the moved folder: resumed, the table still relative.
    _images(moved / "photos", names=("new",))
    assert cli.main(["segment", str(moved / "photos"), "--classes", "cat", "--out", str(moved / "masks")]) == 0
    doc = read_classes_json(moved / "masks" / "classes.json")
    assert doc["images"] == {"grey": "../photos/grey.png", "new": "../photos/new.png",
                             "street": "../photos/street.png"}
    assert len(builds) == 2


def test_absolute_sources_of_older_tables_still_keep_their_names(tmp_path, builds):
    """A classes.json written with absolute paths (earlier versions) is read as before."""
    _images(tmp_path / "in", names=("a",))
    out = tmp_path / "out"
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(out)]) == 0
    doc = json.loads((out / "classes.json").read_text(encoding="utf-8"))
    # An older run named image "a" "special" and recorded its absolute path.
    for suffix in (".png", "_overlay.png"):
        (out / f"a{suffix}").rename(out / f"special{suffix}")
    doc["images"] = {"special": str((tmp_path / "in" / "a.png").resolve())}
    (out / "classes.json").write_text(json.dumps(doc), encoding="utf-8")
    _images(tmp_path / "in", names=("b",))
    plan = plan_outputs([str(tmp_path / "in")], out)
    assert [item.name for item in plan.images] == ["special", "b"]
    assert cli.main(["segment", str(tmp_path / "in"), "--classes", "cat", "--out", str(out)]) == 0
    assert len(builds) == 2 and not (out / "a.png").exists()  # "a" resumed as "special", only "b" done
    assert read_classes_json(out / "classes.json")["images"] == {"b": "../in/b.png", "special": "../in/a.png"}
