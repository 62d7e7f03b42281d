"""Testing helpers: small random-weight models and the engine probe.

Results of the tiny models are meaningless: they exercise the mechanics (shapes,
caching, progress, cancel, I/O) quickly on a CPU, nothing more. :class:`EngineProbe`
records the engine's intermediates and can impose the head matching (parity tests).
"""

from __future__ import annotations

import torch

from ._probe import EngineProbe

__all__ = ["EngineProbe", "tiny_models"]


def tiny_models(seed: int = 0, clip_heads: int = 4, vfm_heads: int = 4):
    """A tiny open_clip CLIP (patch 16), its tokenizer and a tiny timm ViT (patch 8).

    Both have 2 blocks and head dim 32; the weights are random (seeded).
    """
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from timm.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clip = CLIP(
            embed_dim=64,
            vision_cfg=CLIPVisionCfg(layers=2, width=32 * clip_heads, head_width=32, patch_size=16, image_size=224),
            text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
            quick_gelu=True,
        ).eval()
        vfm = VisionTransformer(
            img_size=224, patch_size=8, embed_dim=32 * vfm_heads, depth=2, num_heads=vfm_heads, num_classes=0
        ).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    return clip, tokenizer, vfm
