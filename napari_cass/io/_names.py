"""Portable, letter-keeping file names built from user text (image names, class names).

Users label photos called ``café.jpg`` or ``猫.png``; an ASCII-only sanitiser turns those
into ``caf`` or ``unnamed`` and makes two images write one mask. Here only what is
illegal somewhere is replaced: path separators, the characters Windows forbids, control
characters, reserved device names and trailing dots/spaces. Everything else, letters of any
script included, is kept (NFC-normalised, so macOS and Linux spell a name the same way).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

__all__ = ["printable", "safe_filename", "suffixed_filename", "unique_filenames"]

_RESERVED = {
    "CON", "PRN", "AUX", "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}
# Path separators, characters Windows forbids in names, and control characters.
_ILLEGAL = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]')
_MAX_CHARS = 120
# Most file systems allow 255 bytes per name; leave room for suffixes and extensions.
_MAX_BYTES = 200


# What a terminal would act on instead of showing: C0/C1 controls (ESC starts colour and
# clear-screen sequences, CR overwrites the line, BEL rings), DEL, line and paragraph
# separators, bidirectional overrides (which show a name reversed) and the lone
# surrogates that stand for undecodable bytes of a POSIX file name.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object, newlines: bool = False) -> str:
    """``text`` as it may be printed to a terminal: control characters escaped, not acted on.

    A file name holding ``ESC[2J`` clears the screen when printed raw, a ``CR`` hides what
    came before it on the line. Every message that shows a file name or user text goes
    through this function (the CLI and its error messages, ``eval``, the Ray driver).

    Parameters
    ----------
    text : object
        Converted with ``str``.
    newlines : bool
        Keep line feeds and tabs (a whole multi-line message); a single name escapes them
        too, so that it cannot fake a line of its own.

    Returns
    -------
    str
        ``text`` with each such character written as ``\\xNN`` / ``\\uNNNN`` (``\\n``,
        ``\\r``, ``\\t`` by name); an undecodable byte of a file name as ``\\xNN``.
        Everything else, letters of every script and backslashes included, is unchanged.
    """

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if newlines and char in "\n\t":
            return char
        code = ord(char)
        if char in _NAMED:
            return _NAMED[char]
        if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte code - 0xDC00
            return f"\\x{code - 0xDC00:02x}"
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNPRINTABLE.sub(escape, str(text))


def safe_filename(name: object, max_length: int = _MAX_CHARS) -> str:
    """Turn any text into a file name that is valid on Windows, macOS and Linux.

    Parameters
    ----------
    name : object
        The text (converted with ``str``), e.g. an image stem or a class name.
    max_length : int
        Maximum number of characters; the UTF-8 length is also kept under 200 bytes.

    Returns
    -------
    str
        The name, NFC-normalised, with path separators, Windows-illegal and control
        characters replaced by ``_``; no leading dots (hidden files, ``..``), no trailing
        dots or spaces (Windows drops them), never a reserved device name (``CON``...),
        never empty (``"unnamed"``). Letters of every script are kept.
    """
    text = unicodedata.normalize("NFC", str(name)).strip()
    cleaned = _ILLEGAL.sub("_", text)
    cleaned = re.sub(r"_{2,}", "_", cleaned)
    cleaned = cleaned.lstrip(". ").rstrip(". ")
    if not cleaned.strip("_ "):
        cleaned = "unnamed"
    if cleaned.split(".")[0].strip().upper() in _RESERVED:
        cleaned = f"_{cleaned}"
    if len(cleaned) > max_length:
        cleaned = cleaned[:max_length]
    while len(cleaned.encode("utf-8")) > _MAX_BYTES:
        cleaned = cleaned[:-1]
    cleaned = cleaned.rstrip(". ")
    return cleaned or "unnamed"


def suffixed_filename(base: str, n: int) -> str:
    """``<base>_<n>`` as a safe name; ``base`` is shortened so that the suffix survives.

    Appended to a name at :func:`safe_filename`'s length limit, the suffix would be cut
    off again (a collision never resolved), or the name would pass the limit (and not be
    recognised as a napari-cass name when a run resumes).
    """
    suffix = f"_{n}"
    cut = str(base)
    while True:
        stem = safe_filename(cut + suffix)
        if stem.endswith(suffix) or not cut:
            return stem
        cut = cut[:-1]


def _key(name: str) -> str:
    """How a case-insensitive file system (Windows, macOS) compares two names."""
    return unicodedata.normalize("NFC", name).casefold()


def unique_filenames(names: Sequence[object], taken: Iterable[str] = ()) -> list[str]:
    """Safe names for ``names``, pairwise distinct even on case-insensitive file systems.

    Parameters
    ----------
    names : sequence
        Texts to turn into names, in order (e.g. the stems of the images of a folder).
    taken : iterable of str
        Names already in use that must not be produced (compared case-insensitively).

    Returns
    -------
    list of str
        ``safe_filename`` of each input; where two collide (``Café`` and ``café``, or two
        inputs that differ only in illegal characters), the later one gets ``_2``, ``_3``...
        The result depends only on the inputs and their order, so a re-run over the same
        folder maps every input to the same name. Callers record the original names
        (e.g. in run metadata) so a name can always be traced back.
    """
    used = {_key(t) for t in taken}
    out: list[str] = []
    for name in names:
        base = safe_filename(name)
        candidate, n = base, 1
        while _key(candidate) in used:
            n += 1
            candidate = suffixed_filename(base, n)
        used.add(_key(candidate))
        out.append(candidate)
    return out
