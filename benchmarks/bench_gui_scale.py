"""How long the dock freezes napari, and how memory grows, at 2, 12 and 24 MP.

Usage (a display is needed: run under ``xvfb-run -a`` on a headless machine)::

    python benchmarks/bench_gui_scale.py [--sizes 2 12 24] [--reruns 5] [--code DIR]

Each size runs in a fresh process: a shown napari viewer, the dock opened through
the Plugins path, scikit-image's astronaut scaled to that many megapixels, "person, flag,
rocket, sky", one first run, then ``--reruns`` prompt-only re-runs (every class
re-worded each time: many pixels change, the vision side is reused). A 20 ms timer on the GUI thread
measures the longest freeze from the click on Segment to the shown result
(``tests/_gui_timing.py``). Models: the tiny random-weight test models (the
engine's full-resolution stage runs at full size; labels are meaningless).

``--code DIR`` runs another checkout of napari-cass (e.g. a ``git worktree`` of
an older commit) with the same harness: the "before" column.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r'''
import json, os, sys
sys.path.insert(0, {tests!r})
os.environ.setdefault("NAPARI_CASS_PRECISION", "fp32")
import numpy as np
import napari
from napari_cass.engine import Segmenter, get_preset
from napari_cass.engine.testing import tiny_models
from _gui_timing import rss_mb, timed_run

models = tiny_models()

def factory(clip, vfm, method, preset, device):
    small = get_preset(preset).with_(short_side=112, mode="whole")
    return Segmenter.from_models(*models, method=method, preset=small, device="cpu")

mp, reruns = {mp}, {reruns}
w_px = int((mp * 1e6 * 1.5) ** 0.5) // 40 * 40
h_px = int(mp * 1e6 / w_px) // 40 * 40
viewer = napari.Viewer(show=True)
dock, w = viewer.window.add_plugin_dock_widget("napari-cass", "CASS segmentation")
w.segmenter_factory = factory
from skimage import data
from skimage.transform import resize
img = (resize(data.astronaut(), (h_px, w_px), order=1) * 255).astype(np.uint8)  # the issue's photo
viewer.add_image(np.ascontiguousarray(img), name="photo", rgb=True)
w.select_image("photo")
w.class_table.set_from_text("person, flag, rocket, sky")
start_rss = rss_mb()
first = timed_run(w)
runs, changed = [], []
words = ["person", "flag", "rocket", "sky"]
for k in range(reruns):
    # a prompt-only edit that moves many pixels: every class re-worded (no class removed)
    for row, word in enumerate(words, start=1):
        w.class_table.table.item(row, 1).setText(f"{{word}} {{k}}")
    before = np.array(w.labels_layer_for("photo").data, copy=True)
    runs.append(timed_run(w))
    changed.append(round(float((before != np.asarray(w.labels_layer_for("photo").data)).mean()), 3))
print("RESULT " + json.dumps(dict(
    mp=round(h_px * w_px / 1e6, 1), rss_start_mb=round(start_rss), first_s=round(first.seconds, 2),
    first_gap_s=round(first.max_gap_s, 3), first_rss_mb=round(first.rss_mb),
    rerun_s=[round(r.seconds, 2) for r in runs], rerun_gap_s=[round(r.max_gap_s, 3) for r in runs],
    rerun_rss_mb=[round(r.rss_mb) for r in runs], rerun_changed_fraction=changed,
    rss_growth_mb=round(runs[-1].rss_mb - first.rss_mb) if runs else 0)), flush=True)
viewer.close()
'''


def run_size(mp: float, reruns: int, code: str | None) -> dict:
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [code, env.get("PYTHONPATH")]))
    child = _CHILD.format(tests=str(ROOT / "tests"), mp=mp, reruns=reruns)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{mp} MP run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[2, 12, 24])
    parser.add_argument("--reruns", type=int, default=5)
    parser.add_argument("--code", help="another napari-cass checkout to measure (the 'before')")
    args = parser.parse_args()
    for mp in args.sizes:
        res = run_size(mp, args.reruns, args.code)
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
