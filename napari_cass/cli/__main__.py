"""``python -m napari_cass.cli``: the same as the ``napari-cass`` command."""

import sys

from . import main

sys.exit(main())
