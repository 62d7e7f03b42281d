"""Peak memory does not grow with classes x image size (issue 8), measured in subprocesses.

Random tiny models; a 2000 x 1500 image (a small random image scaled up). The old
engine built ``(classes, H, W)`` float32: 58 extra classes would add
58 x 2000 x 1500 x 4 B = 696 MB. Now only the low-resolution logits grow with the
class count; the bands of full-resolution logits have a fixed size.

Bound, derived: the image is resized to 336 x 448 (short side 336), so one query's
logits there are 336 x 448 x 4 B = 0.60 MB. At most three such planes per query are
alive at once (the merged canvas, one window's resized logits, the finite check),
so 58 extra queries add <= 58 x 3 x 0.60 = 105 MB; plus 2 bands
(2 x BAND_ELEMENTS x 4 B = 16 MB: a band's budget counts all its buffers, whatever the
class count) for allocator slack between the two runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from napari_cass.engine._finish import BAND_ELEMENTS

CHILD = r"""
import json, sys
import numpy as np
import torch
from napari_cass.engine import Segmenter, benchmark_classes
from napari_cass.engine.testing import tiny_models

def peak_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6

n = int(sys.argv[1])
seg = Segmenter.from_models(*tiny_models(), device="cpu", amp=False)
small = (np.random.default_rng(0).random((75, 100, 3)) * 255).astype(np.uint8)
image = np.repeat(np.repeat(small, 20, axis=0), 20, axis=1)  # 1500 x 2000
seg.segment(image[:64, :64], ["warm up"])
before = peak_mb()
res = seg.segment(image, benchmark_classes("ade20k")[:n])
assert res.labels.shape == (1500, 2000) and res.probabilities is None
print(json.dumps({"before": before, "peak": peak_mb()}))
"""


def measure(n_classes: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(n_classes)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_scale_with_classes_times_pixels():
    few, many = measure(2), measure(60)
    growth = many["peak"] - few["peak"]
    plane_mb = 336 * 448 * 4 / 1e6
    bound = 58 * 3 * plane_mb + 2 * BAND_ELEMENTS * 4 / 1e6
    old_path = 58 * 2000 * 1500 * 4 / 1e6
    assert growth < bound, f"peak grew by {growth:.0f} MB from 2 to 60 classes (bound {bound:.0f} MB)"
    assert bound < old_path / 4  # the bound would catch the (classes, H, W) array
