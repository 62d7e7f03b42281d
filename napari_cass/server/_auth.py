"""Bearer tokens: where they live, when they are required, how they are compared."""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import stat
from pathlib import Path

__all__ = ["TokenError", "check_bearer", "default_token_path", "is_loopback", "load_or_create_token", "read_token"]

_TOKEN_FILE = "server-token"


class TokenError(RuntimeError):
    """A token file that is missing, empty or readable by others."""


def is_loopback(host: str) -> bool:
    """True when ``host`` can only be reached from this machine (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]")
    if host.casefold() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so it is not loopback


def default_token_path() -> Path:
    """``<user config dir>/napari-cass/server-token``.

    ``NAPARI_CASS_CONFIG_DIR`` overrides the folder, as for the widget settings.
    """
    folder = os.environ.get("NAPARI_CASS_CONFIG_DIR")
    if not folder:
        from platformdirs import user_config_dir

        folder = user_config_dir("napari-cass")
    return Path(folder) / _TOKEN_FILE


def read_token(path: str | os.PathLike) -> str:
    """Read a token file (the first line, stripped). Refuses empty files and, on POSIX,
    files that other users can read, since anyone holding the token can use the server."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TokenError(f"Token file {path} does not exist: create it (one line, the token) or leave "
                         "--token-file out to have napari-cass generate one.")
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(f"Token file {path} can be read by other users; run 'chmod 600 {path}'.")
    lines = path.read_text(encoding="utf-8").splitlines()
    token = lines[0].strip() if lines else ""
    if len(token) < 16:
        raise TokenError(f"Token file {path} holds no token of at least 16 characters on its first line.")
    return token


def load_or_create_token(path: str | os.PathLike | None = None) -> tuple[str, Path, bool]:
    """The token at ``path`` (default :func:`default_token_path`), generated on first use.

    Returns ``(token, path, created)``. A new file is created with mode 0600 before
    anything is written to it (``O_EXCL``: an existing file is never replaced).
    """
    path = Path(path).expanduser() if path is not None else default_token_path()
    if path.exists():
        return read_token(path), path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token, path, True


def check_bearer(header: str | None, token: str) -> bool:
    """Constant-time check of an ``Authorization: Bearer <token>`` header."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.casefold() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8"), token.encode("utf-8"))
