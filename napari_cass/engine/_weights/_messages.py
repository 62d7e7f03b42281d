"""The message a user sees when weights are missing: every model, in command-line terms.

One message covers every missing model (CLIP and DINO together), so that a
first run without weights says everything at once: for each model the file
name to put where, the download address, and the ``napari-cass weights
import`` command; then every folder that was searched.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._hub import hub_endpoint
from ._models import ModelSpec
from ._places import cache_folder, searched_places

__all__ = ["WeightsNotFoundError", "missing_weights_message"]


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are neither on disk nor downloadable (offline or network error).

    Attributes
    ----------
    models : tuple of str
        Names of every model whose weights are missing.
    """

    def __init__(self, message: str, models: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.models = tuple(models)

    def __str__(self) -> str:  # FileNotFoundError would print "[Errno ...]" otherwise
        return str(self.args[0]) if self.args else ""


def _download_lines(spec: ModelSpec) -> list[str]:
    try:
        source = spec.hub()
    except Exception:
        return ["    1. download it from the model's page on the Hugging Face Hub"]
    lines = [f"    1. download {source.file_url()}"]
    alternatives = [f"{name} from {hub_endpoint()}/{source.repo_id}" for name in source.filenames[1:]]
    if source.url:
        alternatives.append(f"the original release {source.url}")
    if alternatives:
        lines.append(f"       (or {', or '.join(alternatives)})")
    return lines


def missing_weights_message(specs: Sequence[ModelSpec], reason: str,
                            details: dict[str, str] | None = None) -> str:
    """One message naming every missing model, where its file goes and how to get it.

    Parameters
    ----------
    specs : sequence of ModelSpec
        The models whose weights are missing.
    reason : str
        Why nothing was downloaded (offline mode, Hub unreachable, download failed).
    details : dict, optional
        Per model name, an extra line (e.g. that model's download error).
    """
    names = ", ".join(spec.label for spec in specs)
    lines = [f"Model weights are missing for {names}: {reason}."]
    for spec in specs:
        first, *others = spec.expected_files()
        suffixes = ", ".join(name[len(spec.cache_stem):] for name in others)
        lines.append(f"  {spec.label}: no {first} (or {suffixes}) in {cache_folder(spec)}")
        if details and spec.name in details:
            lines.append(f"    error: {details[spec.name]}")
        lines.extend(_download_lines(spec))
        lines.append(f"    2. napari-cass weights import PATH --model {spec.name}")
    folders = [str(cache_folder(spec)) for spec in specs]
    searched = list(dict.fromkeys([*folders, *(p for s in specs for p in searched_places(s))]))
    lines.append(f"Searched: {'; '.join(searched)}.")
    models = " ".join(f"--model {spec.name}" for spec in specs)
    lines.append(f"On a machine with internet access, 'napari-cass weights download {models}' "
                 "fetches them into the cache.")
    return "\n".join(lines)
