"""Object presence on the text side (spec section 5, Eqs. 8-9).

Text embeddings (80 ImageNet templates, cached per query), Ward clustering of the
queries, object-guided text adjustment and the object-perspective similarity.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

from ._backbones import encode_text_truncated

__all__ = [
    "TEMPLATES",
    "TextEncoder",
    "cluster_queries",
    "cluster_leaders",
    "adjust_text",
    "object_similarity",
]


def _templates() -> list[Callable[[str], str]]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return list(OPENAI_IMAGENET_TEMPLATES)


TEMPLATES = _templates()


class TextEncoder:
    """Template-averaged CLIP text embeddings, cached per query word.

    Adding one class costs 80 prompts; the cache makes a prompt edit cost only the
    words that are new. Prompts go through the text tower ``batch_size`` at a time
    (rounded to whole queries: 5 queries of 80 templates) and only the normalised mean
    of each query is kept, in one block per call (not the per-prompt features, 24 MB
    for 150 classes, nor a small tensor per query made between the batches' large
    freed temporaries, which fragments the C heap). The transient is one batch's: ~230
    MB for 400 prompts (mostly the MLP's QuickGELU temporaries), ~35 MB for 80. Each
    batch is cut to its longest prompt, so the batching could change the embeddings'
    last bits; 80-prompt batches gave bit-identical results for ADE20K's 150 classes
    on one CPU, but 400 stays the default: the batching results were always made with.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, device: torch.device, batch_size: int = 400):
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self._cache: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        self._cache.clear()

    @torch.inference_mode()
    def encode(self, queries: Sequence[str]) -> torch.Tensor:
        """``(Q, E)`` float32 unit vectors on the model's device."""
        missing = [q for q in dict.fromkeys(queries) if q not in self._cache]
        per_batch = max(1, self.batch_size // len(TEMPLATES))
        means = None  # one block for all new queries (see the class docstring)
        for start in range(0, len(missing), per_batch):
            group = missing[start : start + per_batch]
            tokens = self.tokenizer([t(q) for q in group for t in TEMPLATES]).to(self.device)
            feats = F.normalize(encode_text_truncated(self.model, tokens).float(), dim=-1)
            if means is None:
                means = feats.new_empty(len(missing), feats.shape[-1])
            block = feats.reshape(len(group), len(TEMPLATES), -1).mean(dim=1)
            F.normalize(block, dim=-1, out=means[start : start + len(group)])
        for q, m in zip(missing, means if means is not None else []):
            self._cache[q] = m
        return torch.stack([self._cache[q] for q in queries])


def cluster_queries(text: torch.Tensor, threshold: float) -> np.ndarray:
    """Ward clustering of the query embeddings on cosine distance, cut at ``threshold``.

    Returns 0-based cluster ids per query.
    """
    t = text.detach().float().cpu().numpy()
    q = t.shape[0]
    if q == 1:
        return np.zeros(1, dtype=np.int64)
    unit = t / np.linalg.norm(t, axis=1, keepdims=True)
    dist = 1.0 - unit @ unit.T
    np.clip(dist, 0.0, 2.0, out=dist)
    dist = (dist + dist.T) / 2
    np.fill_diagonal(dist, 0.0)
    z = linkage(squareform(dist, checks=False), method="ward")
    return (fcluster(z, t=threshold, criterion="distance") - 1).astype(np.int64)


def cluster_leaders(prior: torch.Tensor, clusters: np.ndarray) -> torch.Tensor:
    """Per cluster, the member with the largest presence prior: ``(..., K)`` query indices.

    ``prior`` is ``(Q,)`` or ``(B, Q)``.
    """
    cl = torch.as_tensor(clusters, device=prior.device)
    k = int(cl.max()) + 1
    member = cl[None, :] == torch.arange(k, device=prior.device)[:, None]  # (K, Q)
    masked = torch.where(member, prior[..., None, :], torch.full_like(prior[..., None, :], -torch.inf))
    return masked.argmax(dim=-1)


def adjust_text(
    text: torch.Tensor, features: torch.Tensor, leaders: torch.Tensor, alpha: float, top: int = 2
) -> torch.Tensor:
    """Eq. 8 per crop: move each cluster leader towards the mean of its top-2 patches.

    ``text`` (Q, E), ``features`` (B, N, E) unit vectors, ``leaders`` (K,) or (B, K).
    Returns ``(B, Q, E)``.
    """
    b = features.shape[0]
    if leaders.dim() == 1:
        leaders = leaders.expand(b, -1)
    lead_text = text[leaders]  # (B, K, E)
    sims = features @ lead_text.transpose(-1, -2)  # (B, N, K)
    idx = sims.topk(min(top, features.shape[1]), dim=1).indices  # (B, top, K)
    picked = torch.gather(
        features[:, :, None, :].expand(-1, -1, idx.shape[-1], -1),
        1,
        idx[..., None].expand(-1, -1, -1, features.shape[-1]),
    )  # (B, top, K, E)
    mu = F.normalize(picked.mean(dim=1), dim=-1)
    moved = F.normalize((1 - alpha) * lead_text + alpha * mu, dim=-1)
    out = text.expand(b, -1, -1).clone()
    out.scatter_(1, leaders[..., None].expand(-1, -1, text.shape[-1]), moved)
    return out


def object_similarity(features: torch.Tensor, text: torch.Tensor, prior: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 9: ``(1 - beta) F T~^T + beta p``; ``(B, N, Q)`` patch-query logits (unscaled)."""
    if prior.dim() == 1:
        prior = prior.expand(features.shape[0], -1)
    return (1 - beta) * (features @ text.transpose(-1, -2)) + beta * prior[:, None, :]
