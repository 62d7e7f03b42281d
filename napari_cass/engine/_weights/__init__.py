"""Model weights: where they are looked for, how they are fetched, how they are read safely.

- :mod:`._models`: the models napari-cass builds and where their weights come from.
- :mod:`._places`: our cache folder (``$NAPARI_CASS_CACHE``) and the Hugging Face cache.
- :mod:`._files`: one file to a state dict; safetensors or ``torch.load(weights_only=True)``.
- :mod:`._archive`: a checkpoint's zip records checked against the model before anything inflates.
- :mod:`._torchscript`: OpenAI's TorchScript CLIP releases, allowed by SHA-256, read as data.
- :mod:`._hub`: one quick probe of the Hub, then quiet downloads.
- :mod:`._messages`: one message naming every missing model.
- :mod:`._resolve`: building models with their weights, import and download.

No code path executes a weights file's code: TorchScript's loader (``torch.jit``) is never called and
nothing is unpickled without restrictions.
"""

from ._files import load_state_dict_file
from ._hub import HUB_PROBE_TIMEOUT_S, probe_hub
from ._messages import WeightsNotFoundError, missing_weights_message
from ._models import (CLIP_MODELS, VFM_MODELS, WEIGHT_SUFFIXES, HubSource, ModelSpec,
                      ProgressCallback, find_model)
from ._places import cache_dir
from ._resolve import (build_clip, build_vfm, download_weights, ensure_weights, import_weights,
                       weights_status)
from ._torchscript import OPENAI_CLIP_SHA256, read_torchscript_weights

__all__ = [
    "CLIP_MODELS",
    "HUB_PROBE_TIMEOUT_S",
    "OPENAI_CLIP_SHA256",
    "VFM_MODELS",
    "WEIGHT_SUFFIXES",
    "HubSource",
    "ModelSpec",
    "ProgressCallback",
    "WeightsNotFoundError",
    "build_clip",
    "build_vfm",
    "cache_dir",
    "download_weights",
    "ensure_weights",
    "find_model",
    "import_weights",
    "load_state_dict_file",
    "missing_weights_message",
    "probe_hub",
    "read_torchscript_weights",
    "weights_status",
]
