"""Last-block attention strategies: CASS and the training-free baselines (spec sections 2, 7).

Every method takes the tokens entering CLIP's last block and returns L2-normalised
patch features ``(B, N, E)`` on a patch grid. They differ only in the attention of
that block and in whether its residual and feed-forward are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ._backbones import ClipTokens, ClipVision
from ._probe import EngineProbe
from ._spectral import (
    aggregate,
    eigen_signatures,
    low_rank_graphs,
    match_heads,
    rescale_to_range,
    spectral_distance,
)

__all__ = ["METHODS", "NEEDS_VFM", "CassOptions", "MethodInputs", "patch_features", "proxy_attention"]

METHODS = ("cass", "clip", "maskclip", "sclip", "clearclip", "naclip", "proxyclip")
NEEDS_VFM = frozenset({"cass", "proxyclip"})


@dataclass(frozen=True)
class CassOptions:
    """Switches of the CASS attention (the paper's ablations, Table 3).

    ``vfm_graph=False`` leaves CLIP's own key graph (the vanilla row);
    ``matching=False`` blends head i with head i at equal weight (the "sequential" row);
    ``low_rank=False`` blends the full VFM graph; ``eigenscaling=None`` follows the preset;
    ``adaptive_rank`` uses the energy criterion (eta) instead of the fixed rank;
    ``pairing`` is "reference" (the authors' code, default) or "literal".
    """

    vfm_graph: bool = True
    matching: bool = True
    low_rank: bool = True
    eigenscaling: bool | None = None
    adaptive_rank: float | None = None
    pairing: str = "reference"


@dataclass
class MethodInputs:
    """Everything a last-block strategy may need for one batch of crops."""

    tokens: ClipTokens
    omega: torch.Tensor  # (N, N) Gaussian bias on the CLIP grid
    vfm_keys: torch.Tensor | None = None  # (B, Hv, n, d) on the VFM grid
    vfm_grid: tuple[int, int] | None = None
    vfm_tokens: torch.Tensor | None = None  # (B, n, D) final normed VFM tokens (proxyclip)
    probe: EngineProbe | None = None  # testing hook (napari_cass.engine.testing)


def _key_graph(keys: torch.Tensor, scale: float) -> torch.Tensor:
    """``s K K^T`` per head, ``(B, H, N, N)``, as one bmm over crops x heads (the reference's op)."""
    flat = keys.flatten(0, 1)
    return (torch.bmm(flat, flat.transpose(1, 2)) * scale).unflatten(0, keys.shape[:2])


def _softmax_attn(a: torch.Tensor, b: torch.Tensor, scale: float, bias=None) -> torch.Tensor:
    logits = (a * scale) @ b.transpose(-1, -2)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1)


def vfm_keys_on_clip_grid(keys: torch.Tensor, vfm_grid, clip_grid, clip_keys: torch.Tensor) -> torch.Tensor:
    """VFM keys resampled to CLIP's grid and rescaled to the range of CLIP's keys (spec 3).

    One global min-max per crop, over all heads, as in the reference.
    """
    b, h, n, d = keys.shape
    maps = keys.permute(0, 1, 3, 2).reshape(b, h * d, vfm_grid[0], vfm_grid[1])
    maps = F.interpolate(maps.float(), size=clip_grid, mode="bilinear", align_corners=False)
    k = maps.reshape(b, h, d, -1).permute(0, 1, 3, 2)
    dims = (1, 2, 3)
    k_min, k_max = k.amin(dim=dims, keepdim=True), k.amax(dim=dims, keepdim=True)
    c_min, c_max = clip_keys.amin(dim=dims, keepdim=True), clip_keys.amax(dim=dims, keepdim=True)
    span = k_max - k_min
    unit = (k - k_min) / torch.where(span > 0, span, torch.ones_like(span))
    return unit * (c_max - c_min) + c_min


def distilled_graph(
    clip_graph: torch.Tensor,
    vfm_graph: torch.Tensor,
    *,
    k_eigen: int,
    rank: int,
    lam: float,
    eigenscaling: bool,
    options: CassOptions,
    probe: EngineProbe | None = None,
) -> torch.Tensor:
    """A_psi of Eqs. 5-7 for a batch: ``(B, Hc, N, N)`` from CLIP and VFM graphs.

    Eigen-decompositions are batched over crops and heads; only the Hungarian
    solver (scipy) runs per crop.
    """
    if clip_graph.device.type == "mps":  # no float64 on Apple GPUs: do this small step on the CPU
        out = distilled_graph(
            clip_graph.cpu(), vfm_graph.cpu(), k_eigen=k_eigen, rank=rank, lam=lam,
            eigenscaling=eigenscaling, options=options, probe=probe,
        )
        return out.to(clip_graph.device)
    b, hc = clip_graph.shape[:2]
    hv = vfm_graph.shape[1]
    if options.matching:
        dist = spectral_distance(
            eigen_signatures(vfm_graph, k_eigen), eigen_signatures(clip_graph, k_eigen)
        )  # (B, Hv, Hc)
        clip_idx, vfm_idx, weights = [], [], []
        for i in range(b):
            if probe is not None:  # records, and may impose the assignment (parity tests)
                c, v, w = probe.match_heads(dist[i], options.pairing)
            else:
                c, v, w, _ = match_heads(dist[i], options.pairing)
            clip_idx.append(c), vfm_idx.append(v), weights.append(w)
        clip_idx_t = torch.as_tensor(np.stack(clip_idx), device=clip_graph.device)
        vfm_idx_t = torch.as_tensor(np.stack(vfm_idx), device=clip_graph.device)
        w_t = torch.as_tensor(np.stack(weights), device=clip_graph.device, dtype=torch.float64)
    else:  # "sequential": head i with head i, equal weights (lam * w = 1)
        m = min(hc, hv)
        clip_idx_t = torch.arange(m, device=clip_graph.device).expand(b, m)
        vfm_idx_t = clip_idx_t
        w_t = torch.full((b, m), 1.0 / lam, dtype=torch.float64, device=clip_graph.device)
    bidx = torch.arange(b, device=clip_graph.device)[:, None]
    vfm_sel = vfm_graph[bidx, vfm_idx_t]  # (B, m, N, N)
    clip_sel = clip_graph[bidx, clip_idx_t]
    if options.low_rank:
        recon = low_rank_graphs(
            vfm_sel, rank=rank, scaling=eigenscaling, adaptive_energy=options.adaptive_rank
        )
    else:
        recon = vfm_sel.double().clone()
        recon.diagonal(dim1=-2, dim2=-1).zero_()
    recon = rescale_to_range(recon, clip_sel.double())
    blended = aggregate(recon, clip_sel.double(), w_t, lam).to(clip_graph.dtype)
    out = clip_graph.clone()
    out[bidx, clip_idx_t] = blended
    if probe is not None:
        probe.add("distilled", out)
    return out


def proxy_attention(vfm_tokens: torch.Tensor, beta: float = 1.2, gamma: float = 3.0) -> torch.Tensor:
    """ProxyCLIP's proxy attention ``(B, n, n)`` from the VFM's final patch tokens ``(B, n, D)``.

    ``softmax((S - beta mean S) * gamma)`` with the negative entries masked out, S the
    cosine similarities of the tokens. ProxyCLIP masks negatives to keep each token's
    attention on its similar tokens, and its own token (S = 1, the row maximum) is
    meant to survive. On a near-uniform crop every entry is similar, mean S exceeds
    1 / beta and the reference masks whole rows, whose softmax is NaN (spreading to
    the neighbouring windows through the merge). Here the row maximum is never
    masked: rows the reference leaves finite are unchanged, and a fully masked row
    attends to its best entries (itself) instead of producing NaN.
    """
    feats = F.normalize(vfm_tokens.float(), dim=-1)
    sim = feats @ feats.transpose(-1, -2)  # (B, n, n), one matrix for all heads
    sim = (sim - beta * sim.mean(dim=(-2, -1), keepdim=True)) * gamma
    row_max = sim.amax(dim=-1, keepdim=True)
    return sim.masked_fill((sim < 0) & (sim < row_max), float("-inf")).softmax(dim=-1)


def patch_features(
    method: str,
    clip: ClipVision,
    inputs: MethodInputs,
    *,
    k_eigen: int = 20,
    rank: int = 10,
    lam: float = 10.0,
    eigenscaling: bool = True,
    options: CassOptions = CassOptions(),
) -> tuple[torch.Tensor, tuple[int, int]]:
    """L2-normalised patch features ``(B, N, E)`` of ``method`` and their grid."""
    tokens = inputs.tokens
    q, k, v = clip.qkv(tokens)
    scale = q.shape[-1] ** -0.5
    omega = inputs.omega
    grid = tokens.grid
    x_patch = tokens.x[:, 1:]

    if method == "cass":
        clip_graph = _key_graph(k, scale)
        if options.vfm_graph:
            if inputs.vfm_keys is None:
                raise ValueError("CASS needs the VFM keys: build the Segmenter with a VFM model.")
            kd = vfm_keys_on_clip_grid(inputs.vfm_keys, inputs.vfm_grid, grid, k)
            vfm_graph = _key_graph(kd, scale)
            if inputs.probe is not None:
                inputs.probe.add("vfm_keys", kd)
            graph = distilled_graph(
                clip_graph, vfm_graph, k_eigen=k_eigen, rank=rank, lam=lam,
                eigenscaling=eigenscaling, options=options, probe=inputs.probe,
            )
        else:
            graph = clip_graph
        attn = (graph + omega).softmax(dim=-1)
        out = clip.out_proj(attn @ v)
    elif method == "clip":
        out = clip.residual_ffn(x_patch, clip.out_proj(_softmax_attn(q, k, scale) @ v))
    elif method == "maskclip":
        out = clip.residual_ffn(x_patch, clip.out_proj(v))
    elif method == "sclip":
        attn = _softmax_attn(q, q, scale) + _softmax_attn(k, k, scale)
        out = clip.residual_ffn(x_patch, clip.out_proj(attn @ v))
    elif method == "clearclip":
        out = clip.out_proj(_softmax_attn(q, q, scale) @ v)
    elif method == "naclip":
        out = clip.out_proj(_softmax_attn(k, k, scale, omega) @ v)
    elif method == "proxyclip":
        if inputs.vfm_tokens is None:
            raise ValueError("ProxyCLIP needs the VFM: build the Segmenter with a VFM model.")
        sim = proxy_attention(inputs.vfm_tokens)
        b, h, n, d = v.shape
        vg = inputs.vfm_grid
        v_maps = v.permute(0, 1, 3, 2).reshape(b, h * d, grid[0], grid[1])
        v_up = F.interpolate(v_maps, size=vg, mode="bilinear", align_corners=False)
        v_up = v_up.reshape(b, h, d, -1).permute(0, 1, 3, 2)
        out = clip.out_proj(sim[:, None] @ v_up)
        grid = vg
    else:
        raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
    return clip.project(out), grid
