"""A Label Studio labeling config: which ``<BrushLabels>`` paints which ``<Image>``, with which labels.

The config arrives with every ``/predict`` request, so labels added in Label Studio are
used at the next prediction without restarting anything. Each ``<Label value=...>`` is a
class; its words (the prompts CLIP is asked about) are the value, or the words of a
``prompts="cat | kitten"`` attribute (``|`` or ``,`` between words) when the label has one.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass

__all__ = ["BrushTarget", "LabelConfigError", "brush_target", "label_config_xml", "prompt_words"]

MAX_CONFIG_CHARS = 1_000_000
PROMPTS_ATTRIBUTE = "prompts"


class LabelConfigError(ValueError):
    """A labeling config without a usable ``<BrushLabels>`` on an ``<Image>``."""


@dataclass(frozen=True)
class BrushTarget:
    """One ``<BrushLabels>`` tag: its name, its image's name and data key, its labels."""

    from_name: str
    to_name: str
    data_key: str
    labels: tuple[str, ...]
    words: tuple[tuple[str, ...], ...]

    def fingerprint(self, background: tuple[str, ...] = ()) -> str:
        """8 hex digits naming the labels, their words and the background words."""
        text = repr((self.labels, self.words, tuple(background)))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def prompt_words(value: str, prompts: str | None) -> tuple[str, ...]:
    """The words of one label: those of ``prompts`` ("cat | kitten") or else the value."""
    if prompts is not None and prompts.strip():
        words = tuple(w.strip() for w in prompts.replace(",", "|").split("|") if w.strip())
        if words:
            return words
    return (value.strip(),)


def _parse(config: str) -> ET.Element:
    if not isinstance(config, str) or not config.strip():
        raise LabelConfigError("The project has no labeling config: set one with <BrushLabels> on an <Image>.")
    if len(config) > MAX_CONFIG_CHARS:
        raise LabelConfigError(f"The labeling config has {len(config)} characters; at most "
                               f"{MAX_CONFIG_CHARS} are read.")
    if "<!DOCTYPE" in config.upper() or "<!ENTITY" in config.upper():
        raise LabelConfigError("The labeling config declares a DOCTYPE or entities; remove them.")
    try:
        return ET.fromstring(config)
    except ET.ParseError as exc:
        raise LabelConfigError(f"The labeling config is not valid XML ({exc}).") from None


def brush_target(config: str, from_name: str | None = None) -> BrushTarget:
    """The ``<BrushLabels>`` of ``config`` (the one named ``from_name`` if there are several).

    Raises :class:`LabelConfigError` saying what to add when there is none, when it
    names no ``<Image>``, or when it holds no ``<Label>``.
    """
    root = _parse(config)
    brushes = [el for el in root.iter() if el.tag == "BrushLabels"]
    if from_name is not None:
        brushes = [el for el in brushes if el.get("name") == from_name]
    if not brushes:
        which = f" named {from_name!r}" if from_name else ""
        raise LabelConfigError(f"The labeling config has no <BrushLabels>{which}: napari-cass returns brush "
                               'masks, e.g. <BrushLabels name="tag" toName="image"> with one <Label value=...> '
                               "per class.")
    brush = brushes[0]
    name, to_name = brush.get("name"), brush.get("toName")
    images = {el.get("name"): el for el in root.iter() if el.tag == "Image"}
    if not name or to_name not in images:
        raise LabelConfigError(f"<BrushLabels name={name!r}> must name an <Image> in toName (has {to_name!r}; "
                               f"images: {', '.join(map(repr, images)) or 'none'}).")
    value = images[to_name].get("value") or ""
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f'<Image name="{to_name}"> needs value="$key", the task field holding the '
                               f"image URL (has {value!r}).")
    labels, words = [], []
    for el in brush.iter("Label"):
        label = (el.get("value") or "").strip()
        if not label:
            raise LabelConfigError(f"A <Label> in <BrushLabels name={name!r}> has no value.")
        if label in labels:
            raise LabelConfigError(f"The label {label!r} appears twice in <BrushLabels name={name!r}>.")
        labels.append(label)
        words.append(prompt_words(label, el.get(PROMPTS_ATTRIBUTE)))
    if not labels:
        raise LabelConfigError(f"<BrushLabels name={name!r}> has no <Label value=...>: add one per class.")
    return BrushTarget(name, to_name, value[1:], tuple(labels), tuple(words))


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def label_config_xml(labels, words=None, colors=None) -> str:
    """A labeling config for these labels: ``<Image name="image" value="$image">`` and
    ``<BrushLabels name="tag">``, with ``prompts`` where a label's words are not just its name."""
    lines = ["<View>", '  <Image name="image" value="$image" zoom="true"/>',
             '  <BrushLabels name="tag" toName="image">']
    for i, label in enumerate(labels):
        attrs = f'value="{_attr(label)}"'
        w = tuple(words[i]) if words is not None else (label,)
        if w and w != (label,):
            attrs += f' {PROMPTS_ATTRIBUTE}="{_attr(" | ".join(w))}"'
        if colors is not None:
            r, g, b = (int(c) for c in colors[i])
            attrs += f' background="#{r:02x}{g:02x}{b:02x}"'
        lines.append(f"    <Label {attrs}/>")
    lines += ["  </BrushLabels>", "</View>"]
    return "\n".join(lines) + "\n"
