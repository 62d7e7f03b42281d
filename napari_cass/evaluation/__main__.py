"""``python -m napari_cass.evaluation --dataset voc21 --root PATH``: same as ``napari-cass eval``."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
