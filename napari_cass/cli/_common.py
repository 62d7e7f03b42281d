"""Names shared by the CLI's commands; importing this imports neither torch nor napari."""

from __future__ import annotations

from ..io._images import IMAGE_SUFFIXES

__all__ = [
    "CLIP_CHOICES",
    "CliError",
    "DEFAULT_DOWNLOADS",
    "IMAGE_SUFFIXES",
    "METHOD_CHOICES",
    "PRESET_CHOICES",
    "VFM_CHOICES",
]

# Mirrors of the engine's names (a test keeps them in sync) so building the parser
# does not import torch.
METHOD_CHOICES = ("cass", "clip", "maskclip", "sclip", "clearclip", "naclip", "proxyclip")
PRESET_CHOICES = (
    "interactive", "voc20", "voc21", "context59", "context60", "coco_object", "coco_stuff",
    "ade20k", "cityscapes",
)
CLIP_CHOICES = ("ViT-B-16", "ViT-B-32", "ViT-L-14")
VFM_CHOICES = ("dino_vitb8", "dino_vits8", "dino_vitb16")
DEFAULT_DOWNLOADS = ("ViT-B-16", "dino_vitb8")


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""
