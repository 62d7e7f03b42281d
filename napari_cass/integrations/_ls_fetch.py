"""Fetch a task's image from Label Studio, under the same limits as an upload to the server.

A task names its image by URL: ``/data/upload/...`` (files uploaded to Label Studio),
``/data/local-files/?d=...`` (local storage), or a full ``http(s)`` URL. Relative URLs
are resolved against the Label Studio URL given to the server, and only that host (plus
the hosts a setting allows) is ever contacted: a task cannot make the server fetch from
its own network. The API token goes to the Label Studio host only, never to another
host; a redirect is followed only to an allowed host. The body is read up to a byte
limit, the pixel count is checked from the header before decoding
(:func:`napari_cass.io.read_image`).
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np

__all__ = ["FetchError", "ImageFetcher"]

MAX_REDIRECTS = 3
_SUFFIX = {"image/png": ".png", "image/jpeg": ".jpg", "image/tiff": ".tif", "image/bmp": ".bmp"}


class FetchError(ValueError):
    """An image that may not or could not be fetched; the message says which and why."""


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, f"{(parts.hostname or '').lower()}:{port}"


class ImageFetcher:
    """Fetch and decode task images from one Label Studio.

    Parameters
    ----------
    base_url : str
        Label Studio's address as the server reaches it, e.g. ``http://127.0.0.1:8080``.
    token : str, optional
        An API token of a Label Studio user who can read the project: a legacy token
        (sent as ``Authorization: Token ...``) or a personal access token (a JWT,
        exchanged at ``/api/token/refresh`` for short-lived access tokens).
    allowed_hosts : list of str
        Other hosts (``name`` or ``name:port``) images may be fetched from, without the token.
    max_bytes, max_pixels : int
        Largest body and image, as for uploads to the server.
    timeout : float
        Seconds to connect and to wait for each read.
    """

    def __init__(self, base_url: str, token: str | None = None, allowed_hosts=(), *,
                 max_bytes: int = 64 * 2**20, max_pixels: int = 40_000_000, timeout: float = 30.0):
        import httpx

        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Label Studio URL {base_url!r}: give http(s)://host:port.")
        self.base_url = base_url.rstrip("/") + "/"
        self._origin = _origin(self.base_url)
        self._allowed = set()
        for host in allowed_hosts:
            host = host.strip().lower()
            if host:
                self._allowed.add(host if ":" in host else f"{host}:*")
        self.max_bytes, self.max_pixels = int(max_bytes), int(max_pixels)
        self._token = token
        self._access: str | None = None
        self._lock = threading.Lock()
        self._client = httpx.Client(trust_env=False, follow_redirects=False, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ where
    def resolve(self, url: str) -> tuple[str, bool]:
        """``(absolute URL, is Label Studio's own host)``; raises :class:`FetchError` if not allowed."""
        if not isinstance(url, str) or not url.strip():
            raise FetchError("The task has no image URL in the field the <Image> tag names.")
        url = url.strip()
        if url.startswith("data:"):
            raise FetchError("Inline data: images are not accepted; upload the image to Label Studio instead.")
        absolute = urljoin(self.base_url, url)
        scheme, origin = _origin(absolute)
        if scheme not in ("http", "https"):
            raise FetchError(f"Cannot fetch {scheme}:// images ({url[:80]}); napari-cass reads images that "
                             "Label Studio serves over http(s) (uploads, local storage, or presigned URLs).")
        if (scheme, origin) == self._origin:
            return absolute, True
        host = origin.rsplit(":", 1)[0]
        if origin in self._allowed or f"{host}:*" in self._allowed:
            return absolute, False
        raise FetchError(f"The image is on {origin}, not on Label Studio ({self._origin[1]}): refused. If that "
                         f"host is trusted, allow it with --label-studio-allow-host {host}.")

    # ------------------------------------------------------------------ auth
    def _is_jwt(self) -> bool:
        return bool(self._token) and self._token.count(".") == 2 and self._token.startswith("ey")

    def _auth_header(self, renew: bool = False) -> dict[str, str]:
        if not self._token:
            return {}
        if not self._is_jwt():
            return {"Authorization": f"Token {self._token}"}
        with self._lock:
            if self._access is None or renew:
                r = self._client.post(urljoin(self.base_url, "api/token/refresh/"), json={"refresh": self._token})
                if r.status_code != 200 or "access" not in r.json():
                    raise FetchError(f"Label Studio refused the personal access token (HTTP {r.status_code}); "
                                     "create a new one under Account & Settings.")
                self._access = str(r.json()["access"])
            return {"Authorization": f"Bearer {self._access}"}

    # ------------------------------------------------------------------ fetch
    def fetch_bytes(self, url: str) -> tuple[bytes, str]:
        """The body of ``url`` (at most ``max_bytes``) and its content type.

        A redirect (Label Studio sends cloud-storage images as presigned URLs) is followed
        only to an allowed host, without the token, at most :data:`MAX_REDIRECTS` times.
        """
        import httpx

        absolute, own = self.resolve(url)
        renewed = False
        for _ in range(MAX_REDIRECTS + 2):
            headers = self._auth_header(renew=renewed) if own else {}
            try:
                with self._client.stream("GET", absolute, headers=headers) as r:
                    if r.status_code == 401 and own and self._is_jwt() and not renewed:
                        renewed = True  # the access token expired: renew it once
                        continue
                    if r.status_code in (301, 302, 303, 307, 308) and r.headers.get("location"):
                        absolute, own = self.resolve(urljoin(absolute, r.headers["location"]))
                        continue
                    if r.status_code != 200:
                        hint = (" (is the token file's token one of a user of this project?)"
                                if r.status_code in (401, 403) else "")
                        raise FetchError(f"Label Studio answered HTTP {r.status_code} for {url[:120]}{hint}.")
                    return self._body(r, url)
            except httpx.HTTPError as exc:
                raise FetchError(f"Cannot fetch {url[:120]} from {urlsplit(absolute).netloc}: "
                                 f"{type(exc).__name__}: {exc}") from None
        raise FetchError(f"Too many redirects (or refused renewed tokens) for {url[:120]}.")

    def _body(self, r, url: str) -> tuple[bytes, str]:
        declared = r.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(f"The image {url[:120]} is {declared} bytes; at most {self.max_bytes} "
                             "are accepted (--max-upload-mb).")
        chunks, size = [], 0
        for chunk in r.iter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise FetchError(f"The image {url[:120]} exceeds {self.max_bytes} bytes (--max-upload-mb).")
            chunks.append(chunk)
        return b"".join(chunks), r.headers.get("content-type", "").split(";")[0].strip().lower()

    def fetch(self, url: str) -> np.ndarray:
        """Fetch and decode ``url``; the pixel count is checked before decoding."""
        from ..io import read_image

        body, ctype = self.fetch_bytes(url)
        suffix = _SUFFIX.get(ctype) or Path(urlsplit(url).path).suffix.lower() or ".png"
        if suffix not in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
            suffix = ".png"  # read_image looks at the content, the suffix only picks TIFF or not
        with tempfile.TemporaryDirectory(prefix="napari-cass-ls-") as tmp:
            path = Path(tmp) / f"image{suffix}"
            path.write_bytes(body)
            try:
                image = read_image(path, max_pixels=self.max_pixels)
            except (ValueError, OSError) as exc:
                raise FetchError(f"Cannot decode the image {url[:120]}: {exc}".replace(str(path), "it")) from None
        return image
