"""napari must survive the engine's imports after its OpenGL window exists.

On Mesa OpenGL (Xvfb here, VMs and remote desktops for users) importing
open_clip after the window is up loaded triton's LLVM over Mesa's and crashed the
process with a segfault. Runs in a subprocess so a crash fails this test instead
of killing the test session.
"""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    QApplication.processEvents()
    import napari_cass.plugin._widget  # what napari imports when the dock widget is opened
    import open_clip, timm  # the engine's imports (torchvision -> torch._dynamo -> triton)
    viewer.add_image(np.zeros((8, 8)))
    QApplication.processEvents()
    viewer.close()
    print("survived")
    """
)


def test_engine_imports_after_the_gl_window_do_not_crash():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "survived" in proc.stdout, (proc.returncode, proc.stderr[-2000:])
