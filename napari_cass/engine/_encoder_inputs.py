"""What each encoder is fed: CLIP and DINO normalisations, and the reference's quirks.

Under ``reference_quirks`` the inputs reproduce the authors' pipeline (spec sections 1
and 3): mmsegmentation's rounded CLIP statistics, and for DINO a round trip through
uint8 with the wrong statistics and a PIL square resize. Otherwise each encoder gets
its own normalisation of the same pixels.
"""

from __future__ import annotations

import numpy as np
import torch

from ._backbones import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD

__all__ = ["clip_input", "vfm_input", "float_tokens"]

# mmsegmentation's data preprocessor constants, which the reference normalises with
# (CLIP's mean/std times 255, rounded to 3 decimals).
_MMSEG_MEAN = (122.771, 116.746, 104.094)
_MMSEG_STD = (68.501, 66.632, 70.323)
# The reference un-normalises crops for DINO with ImageNet statistics, blue std typed 0.255.
_REF_INV_STD = (0.229, 0.224, 0.255)


def _column(values, device) -> torch.Tensor:
    return torch.tensor(values, device=device)[:, None, None]


def clip_input(pixels: torch.Tensor, reference_quirks: bool = False) -> torch.Tensor:
    """``(3, h, w)`` (or batched) 0..255 pixels -> CLIP's normalised input."""
    if reference_quirks:
        return (pixels - _column(_MMSEG_MEAN, pixels.device)) / _column(_MMSEG_STD, pixels.device)
    return (pixels / 255.0 - _column(CLIP_MEAN, pixels.device)) / _column(CLIP_STD, pixels.device)


def vfm_input(
    pixels: torch.Tensor,
    clip_in: torch.Tensor,
    patch: tuple[int, int],
    reference_quirks: bool = False,
    probe=None,
) -> torch.Tensor:
    """DINO input for a batch of crops: ``pixels`` 0..255 and their CLIP-normalised form.

    Trimmed to a multiple of the patch size. ``probe`` (an ``EngineProbe``) records the
    reference-quirks uint8 picture as ``"vfm_uint8"``.
    """
    mean, std = _column(IMAGENET_MEAN, pixels.device), _column(IMAGENET_STD, pixels.device)
    if reference_quirks:
        # The reference's round trip: un-normalise with the wrong statistics,
        # truncate to uint8, square-resize with PIL bicubic, then ToTensor + ImageNet.
        inv_mean = [-m / s for m, s in zip(IMAGENET_MEAN, _REF_INV_STD)]
        inv_std = [1 / s for s in _REF_INV_STD]
        back = (clip_in - _column(inv_mean, pixels.device)) / _column(inv_std, pixels.device)
        u8 = (back * 255).to(torch.uint8)
        h, w = u8.shape[-2:]
        if h != w:
            u8 = _pil_square_resize(u8, min(h, w))
        if probe is not None:
            probe.add("vfm_uint8", u8.cpu())
        x = (u8.float() / 255.0 - mean) / std
    else:
        x = (pixels / 255.0 - mean) / std
    h, w = x.shape[-2:]
    return x[..., : h - h % patch[0], : w - w % patch[1]]


def float_tokens(tokens):
    """Tokens out of an autocast region, back in float32 (in place)."""
    tokens.x = tokens.x.float()
    return tokens


def _pil_square_resize(u8: torch.Tensor, side: int) -> torch.Tensor:
    """PIL bicubic resize of ``(B, 3, h, w)`` uint8 crops to ``side x side`` (reference quirk)."""
    from PIL import Image

    out = []
    for img in u8.cpu():
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        out.append(torch.from_numpy(np.array(pil.resize((side, side), Image.BICUBIC))).permute(2, 0, 1))
    return torch.stack(out).to(u8.device)
