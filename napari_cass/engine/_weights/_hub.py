"""The Hugging Face Hub: one quick reachability probe, then quiet downloads.

huggingface_hub retries a failed metadata request for up to a minute and logs
every retry; on a machine without network a first run used to spend ~50 s
printing dozens of warnings. Here the Hub is asked once, with a short timeout,
before any download; downloads only start when it answered, and run with
huggingface_hub's logging turned down to errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._models import ModelSpec, ProgressCallback
from ._places import cache_folder

__all__ = ["HUB_PROBE_TIMEOUT_S", "download_to_temp", "hub_endpoint", "probe_hub", "quiet_hub_logging"]

#: Seconds the reachability probe waits for the Hub (DNS included) before giving up;
#: the environment variable ``NAPARI_CASS_HUB_TIMEOUT`` overrides it (slow networks).
HUB_PROBE_TIMEOUT_S = 3.0
#: Seconds huggingface_hub waits for a file's metadata once the Hub did answer.
_ETAG_TIMEOUT_S = 10.0


def hub_endpoint() -> str:
    """The Hub address in use (``HF_ENDPOINT`` or https://huggingface.co)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _probe_timeout() -> float:
    text = os.environ.get("NAPARI_CASS_HUB_TIMEOUT", "").strip()
    try:
        value = float(text) if text else HUB_PROBE_TIMEOUT_S
    except ValueError:
        raise ValueError(f"NAPARI_CASS_HUB_TIMEOUT must be a number of seconds, got {text!r}.") from None
    if not value > 0:
        raise ValueError(f"NAPARI_CASS_HUB_TIMEOUT must be above 0 seconds, got {text!r}.")
    return value


def probe_hub(timeout: float | None = None) -> str | None:
    """Ask the Hub once, without retries; ``None`` if it answered, else why not.

    Parameters
    ----------
    timeout : float, optional
        Seconds to wait (default: ``NAPARI_CASS_HUB_TIMEOUT`` or
        :data:`HUB_PROBE_TIMEOUT_S`). The request runs in a daemon thread, so a
        hanging name lookup cannot hold the caller longer than ``timeout`` + 1 s.
    """
    wait = _probe_timeout() if timeout is None else float(timeout)
    url = hub_endpoint()
    result: dict[str, Any] = {}

    def attempt() -> None:
        try:
            from huggingface_hub import get_session

            result["status"] = get_session().head(url, timeout=wait, follow_redirects=False).status_code
        except Exception as exc:  # network errors of any library: all mean "not reachable"
            result["error"] = exc

    worker = threading.Thread(target=attempt, name="napari-cass-hub-probe", daemon=True)
    worker.start()
    worker.join(wait + 1.0)
    if worker.is_alive() or ("status" not in result and "error" not in result):
        return f"{url} did not answer within {wait:g} s"
    error = result.get("error")
    if isinstance(error, TimeoutError) or "timeout" in type(error).__name__.lower():
        return f"{url} did not answer within {wait:g} s"
    if error is not None:
        return f"{url} is unreachable ({_first_line(error)})"
    if int(result["status"]) >= 500:
        return f"{url} answered with HTTP error {result['status']}"
    return None


@contextlib.contextmanager
def quiet_hub_logging() -> Iterator[None]:
    """Turn huggingface_hub's own logging (retry warnings) down to errors for a while."""
    logger = logging.getLogger("huggingface_hub")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _callback_bar(progress: ProgressCallback, message: str) -> type:
    """A tqdm class that forwards byte counts to ``progress(done, total, message)``."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Bar(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._cb_total = int(kwargs.get("total") or 0)
            self._cb_done = int(kwargs.get("initial") or 0)
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            self._cb_done += int(n or 0)
            try:
                progress(self._cb_done, self._cb_total, message)
            except Exception:  # a UI callback must never break a download
                pass
            return super().update(n)

    return Bar


def download_to_temp(spec: ModelSpec, progress: ProgressCallback | None) -> tuple[Path, Path]:
    """Download ``spec``'s weights into a temporary folder inside our cache.

    Returns
    -------
    (file, folder)
        The downloaded file and the temporary folder to delete afterwards.

    Raises
    ------
    OSError
        With every file variant's error, when none could be downloaded.
    """
    import huggingface_hub

    source = spec.hub()
    folder = cache_folder(spec)
    folder.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    errors: list[str] = []
    try:
        with quiet_hub_logging():
            for file_name in source.filenames:
                kwargs: dict[str, Any] = {"etag_timeout": _ETAG_TIMEOUT_S}
                if progress is not None:
                    kwargs["tqdm_class"] = _callback_bar(progress, f"Downloading {spec.name} ({file_name})")
                try:
                    path = huggingface_hub.hf_hub_download(source.repo_id, file_name, local_dir=tmp_dir,
                                                           **kwargs)
                    return Path(path), tmp_dir
                except Exception as exc:  # missing file variant, network error, ...
                    errors.append(f"{file_name}: {_first_line(exc)}")
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise OSError("; ".join(errors))
