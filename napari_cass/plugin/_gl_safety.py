"""Keep PyTorch's compiler stack from crashing napari on Mesa OpenGL.

open_clip and timm import torchvision, which imports ``torch._dynamo``, which loads
triton's ``libtriton.so`` with its own copy of LLVM. When that happens after
napari's OpenGL context exists on a Mesa driver (llvmpipe on VMs and remote
desktops, radeonsi), the two LLVMs' symbols clash and the process segfaults.
Loading triton with ``RTLD_DEEPBIND`` makes it bind to its own LLVM first; triton
keeps working for anyone who needs it.
"""

from __future__ import annotations

import os
import sys

__all__ = ["preload_triton"]


def preload_triton() -> None:
    """Import triton with deep binding, once, before anything else pulls it in."""
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return
    deepbind = getattr(os, "RTLD_DEEPBIND", None)
    if deepbind is None:
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_NOW | deepbind)
    try:
        import triton  # noqa: F401
    except Exception:  # not installed (CPU builds) or broken: nothing to protect
        pass
    finally:
        sys.setdlopenflags(flags)
