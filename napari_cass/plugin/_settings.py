"""Remembered widget choices (method, preset, backbones, device, last class list).

napari 0.9 shows the manifest's ``configurations`` contribution in its
Preferences dialog: those are the *defaults* (``defaults.method``, ...). What the
user last chose in the widget is remembered separately in a small JSON file in
``platformdirs.user_config_dir("napari-cass")`` (override the folder with the
environment variable ``NAPARI_CASS_CONFIG_DIR``), because napari has no place for
free-form state such as the last class list. Order of precedence when the widget
opens: the JSON file, then napari's plugin preferences, then built-in defaults.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["WidgetSettings", "load_settings", "private_file", "save_settings", "settings_path"]

_FILE_NAME = "widget.json"
_PREFERENCE_KEYS = ("method", "preset", "clip", "vfm", "device")


@dataclass
class WidgetSettings:
    """The choices the widget restores on the next start."""

    method: str = "cass"
    preset: str = "interactive"
    clip: str = "ViT-B-16"
    vfm: str = "dino_vitb8"
    device: str = "auto"
    classes_text: str = "person\nsky\ngrass\ntree\nbuilding"
    #: One ``[name, synonym, ...]`` per class: unambiguous, unlike ``classes_text``
    #: whose single line "person, man, woman" reads as three classes.
    class_rows: list = field(default_factory=list)
    background: str = ""
    stack_mode: str = "choose for stacks…"
    show_confidence: bool = False
    refine_boundaries: bool = False
    #: The "server…" device: URL, token file path, and a pasted token (see :func:`save_settings`).
    server_url: str = ""
    server_token_file: str = ""
    server_token: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WidgetSettings:
        """Keep only known keys of the right type (a stale file must never break the widget)."""
        out = cls()
        for f in fields(cls):
            value = data.get(f.name)
            if value is not None and isinstance(value, type(getattr(out, f.name))):
                setattr(out, f.name, value)
        return out


def settings_path() -> Path:
    """Where the JSON file lives (``NAPARI_CASS_CONFIG_DIR`` wins over the platform folder)."""
    folder = os.environ.get("NAPARI_CASS_CONFIG_DIR")
    if not folder:
        from platformdirs import user_config_dir

        folder = user_config_dir("napari-cass")
    return Path(folder) / _FILE_NAME


def _napari_preferences() -> dict[str, Any]:
    """The defaults set in napari's Preferences (only when the plugin is installed)."""
    try:
        from napari.settings import get_plugin_settings

        defaults = get_plugin_settings("napari-cass").defaults
        return {k: getattr(defaults, k) for k in _PREFERENCE_KEYS}
    except Exception:  # noqa: BLE001 - not installed / older napari: use built-in defaults
        return {}


def load_settings(use_preferences: bool = True) -> WidgetSettings:
    """Read the remembered choices; a missing or corrupt file gives the defaults."""
    path = settings_path()
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                return WidgetSettings.from_dict(data)
        except (OSError, ValueError):
            pass
    return WidgetSettings.from_dict(_napari_preferences() if use_preferences else {})


def private_file(path: Path) -> bool:
    """True when ``path`` exists and only its owner may read it (POSIX mode ``0600`` or less).

    Elsewhere (Windows) this cannot be checked cheaply, so it is False.
    """
    try:
        return os.name == "posix" and path.is_file() and path.stat().st_mode & 0o077 == 0
    except OSError:
        return False


def save_settings(settings: WidgetSettings) -> Path | None:
    """Write the choices atomically; failures are ignored (remembering is a convenience).

    A pasted server token is written only into a settings file that its owner alone can
    read (``chmod 600 widget.json``); otherwise it is left out (the widget keeps it for
    the session). A token file is remembered by its path, never by its content.
    """
    from napari_cass.io import atomic_write

    path = settings_path()
    data = asdict(settings)
    if data["server_token_file"] or not private_file(path):
        data["server_token"] = ""
    try:
        with atomic_write(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    except OSError:
        return None
    return path
