"""Open napari, run the CASS widget on the astronaut sample, save screenshots and timings.

Run under a virtual display on a headless machine::

    xvfb-run -a python docs/screenshots.py            # full-size random-weight models
    xvfb-run -a python docs/screenshots.py --tiny     # tiny random models (seconds)

The models have RANDOM weights (``Segmenter.from_pretrained(clip_weights="random",
vfm_weights="random")`` builds full-size ViT-B/16 CLIP + ViT-B/8 DINO): the labels
are meaningless. The screenshots show the workflow and the UI, not segmentation
quality; the timings are what one run costs on this machine.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def _factory(tiny: bool) -> Callable[..., Any]:
    from napari_cass.engine import Segmenter

    if tiny:
        from napari_cass.engine.testing import tiny_models

        models = tiny_models()

        def make(clip: str, vfm: str, method: str, preset: str, device: str) -> Any:
            return Segmenter.from_models(*models, method=method, preset=preset, device="cpu")

        return make

    def make_random(clip: str, vfm: str, method: str, preset: str, device: str) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "random weights" warning: we know
            return Segmenter.from_pretrained(
                clip=clip, clip_weights="random", vfm=vfm, vfm_weights="random",
                method=method, preset=preset, device=device,
            )

    return make_random


def _wait(widget: Any, timeout: float = 600.0) -> float:
    from qtpy.QtWidgets import QApplication

    start = time.perf_counter()
    while widget.is_running:
        QApplication.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - start > timeout:
            raise TimeoutError("segmentation took too long")
    for _ in range(20):  # let napari redraw
        QApplication.processEvents()
        time.sleep(0.02)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random models (fast)")
    parser.add_argument("--out", type=Path, default=HERE / "images")
    args = parser.parse_args(argv)

    # Import torch's stack (open_clip -> torchvision -> torch._dynamo -> triton) BEFORE
    # napari creates its OpenGL context: under Mesa's llvmpipe (Xvfb) triton's bundled
    # LLVM loaded after the GL driver crashes the process.
    import napari
    import open_clip  # noqa: F401
    import timm  # noqa: F401
    from qtpy.QtWidgets import QApplication, QMainWindow

    from napari_cass.plugin._sample_data import astronaut

    args.out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True, title="napari-cass")
    (data, kwargs, _), = astronaut()
    viewer.add_image(data, **kwargs)
    # The way users open it: Plugins > CASS segmentation (napari hands it a proxy viewer).
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-cass", "CASS segmentation")
    widget.segmenter_factory = _factory(args.tiny)
    window = next(w for w in QApplication.topLevelWidgets()
                  if isinstance(w, QMainWindow) and w.isAncestorOf(widget))
    window.showNormal()
    window.resize(1366, 768)  # a laptop screen: every section must stay reachable
    widget.device_combo.setCurrentText("cpu")
    widget.method_combo.setCurrentText("cass")
    widget.preset_combo.setCurrentText("interactive")
    widget.class_table.set_from_text("person | astronaut, flag, rocket, sky")
    widget.confidence_check.setChecked(False)
    _wait(widget, 5)

    timings: dict[str, Any] = {"models": "tiny random" if args.tiny else "full-size random"}
    t0 = time.perf_counter()
    widget.segment()
    timings["first_run_s_incl_model_build"] = round(_wait(widget) + (time.perf_counter() - t0) * 0, 2)
    timings["first_run_engine"] = {k: round(v, 2) for k, v in widget.last_run["timings"].items()}

    # Same image again with the models built: the "one segmentation" number.
    widget.segmenter.clear_cache()
    widget.replace_all_check.setChecked(True)
    widget.segment()
    timings["segment_s"] = round(_wait(widget), 2)
    viewer.screenshot(str(args.out / "segment_astronaut.png"), canvas_only=False)

    # Prompt-only change: the image features are re-used.
    widget.class_table.set_from_text("person | astronaut, flag, rocket, sky, spacesuit")
    widget.confidence_check.setChecked(True)
    widget.segment()
    timings["prompt_only_rerun_s"] = round(_wait(widget), 2)
    timings["prompt_only_from_cache"] = widget.last_run["from_cache"]
    viewer.layers["astronaut confidence"].visible = False

    # Correction: re-segment inside a box only, keeping the edits elsewhere.
    labels = viewer.layers["astronaut labels"]
    labels.brush_size = 40
    for x in range(60, 200, 20):  # a manual "flag" correction with the brush
        labels.paint((425, x), 2)
    viewer.add_shapes([np.array([[40, 150], [40, 380], [300, 380], [300, 150]])],
                      shape_type="rectangle", name="region", edge_color="yellow",
                      face_color="transparent", edge_width=4)
    widget.region_combo.setCurrentText("region")
    widget.replace_all_check.setChecked(False)
    widget.class_table.set_from_text("person | astronaut, flag, rocket, sky, spacesuit, helmet")
    widget.segment()
    timings["region_rerun_s"] = round(_wait(widget), 2)
    viewer.layers.selection.active = labels
    _wait(widget, 5)
    viewer.screenshot(str(args.out / "correct_region.png"), canvas_only=False)

    # The lower part of the dock (Export, Batch), scrolled into view.
    for section in widget.sections.values():
        section.expand(animate=False)
    _wait(widget, 5)
    widget.scroll.ensureWidgetVisible(widget.batch_panel.next_btn)
    _wait(widget, 5)
    viewer.screenshot(str(args.out / "dock_scrolled.png"), canvas_only=False)

    if not args.tiny:  # timings of the tiny models mean nothing
        (args.out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(json.dumps(timings, indent=2))
    viewer.close()
    return timings


if __name__ == "__main__":
    main()
