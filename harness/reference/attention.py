"""Scaled dot-product attention and multi-head attention, written from the formula.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V          (Vaswani et al., 2017, eq. 1)

Only torch is imported. The explicit path never calls torch's fused attention or
``torch.nn.MultiheadAttention``; ``MultiHeadAttention(..., fused=True)`` switches to
``F.scaled_dot_product_attention`` so that the two paths can be checked against each other.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(QKᵀ·scale + mask) V, with q (..., N, d), k (..., M, d), v (..., M, d_v), as torch's.

    ``attn_mask`` broadcasts to (..., N, M). A boolean mask keeps the positions that are True
    (torch's convention); a float mask is added to the scores. ``is_causal`` lets query i see keys
    0..i (top-left aligned, as torch does) and cannot be combined with ``attn_mask``.

    A query row whose keys are all masked out gives a row of zeros, the same as torch's math
    backend (a softmax over no keys is undefined; zero is the value that propagates no NaN).

    bfloat16 / float16 inputs are computed in float32 (scores, softmax, sums and the weighted sum of V)
    and the output rounded once to the input dtype, as fused kernels accumulate; float32 and float64 are
    computed in their own dtype.
    """
    if is_causal and attn_mask is not None:
        raise ValueError("pass either attn_mask or is_causal=True, not both (torch's rule)")
    n, m = q.size(-2), k.size(-2)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    out_dtype, acc = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)

    scores = (q @ k.transpose(-2, -1)) * scale  # (..., N, M)
    if is_causal:
        attn_mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask

    # softmax written out: exp(s - max) / Σ exp(s - max); a row of -inf has max -inf, guard it.
    row_max = scores.amax(dim=-1, keepdim=True)
    dead = torch.isneginf(row_max)  # (..., N, 1) rows with no visible key
    row_max = torch.where(dead, torch.zeros_like(row_max), row_max)
    weights = torch.exp(scores - row_max)
    denom = weights.sum(dim=-1, keepdim=True)
    weights = weights / torch.where(dead, torch.ones_like(denom), denom)
    return (weights @ v).to(out_dtype)  # (..., N, d_v)


def online_softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    is_causal: bool = False,
    scale: float | None = None,
    block_size: int = 256,
) -> torch.Tensor:
    """The same softmax(QKᵀ·scale) V, computed over blocks of keys with an online softmax (Milakov &
    Gimelshein, 2018; the idea of FlashAttention): memory O(N · block_size) instead of O(N · M).

    For each block of keys the scores S_b are formed, the running row maximum m is raised to cover them,
    and the running sum ℓ and output accumulator O are rescaled by exp(m_old - m_new) before the block's
    exp(S_b - m_new) is added. At the end O / ℓ is softmax(S) V exactly, up to round-off; the N×M score
    matrix never exists. ``is_causal`` and low precision as in scaled_dot_product_attention.
    """
    n, m = q.size(-2), k.size(-2)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    out_dtype, acc = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    out = q.new_zeros(*q.shape[:-1], v.size(-1))  # (..., N, d_v) accumulator O
    row_max = q.new_full((*q.shape[:-1], 1), float("-inf"))  # m
    row_sum = q.new_zeros((*q.shape[:-1], 1))  # ℓ
    query_pos = torch.arange(n, device=q.device)[:, None]
    for start in range(0, m, block_size):
        kb, vb = k[..., start: start + block_size, :], v[..., start: start + block_size, :]
        scores = (q @ kb.transpose(-2, -1)) * scale  # (..., N, b): one block of keys
        if is_causal:
            key_pos = torch.arange(start, start + kb.size(-2), device=q.device)[None, :]
            scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
        new_max = torch.maximum(row_max, scores.amax(dim=-1, keepdim=True))
        safe = torch.where(torch.isneginf(new_max), torch.zeros_like(new_max), new_max)  # rows with no key yet
        weights = torch.exp(scores - safe)
        rescale = torch.exp(row_max - safe)  # exp(m_old - m_new); 0 while m_old is -inf
        row_sum = row_sum * rescale + weights.sum(dim=-1, keepdim=True)
        out = out * rescale + weights @ vb
        row_max = new_max
    return (out / torch.where(row_sum == 0, torch.ones_like(row_sum), row_sum)).to(out_dtype)


class MultiHeadAttention(nn.Module):
    """Self-attention with h heads: one fused qkv projection, per-head attention, concat, W_O.

    Parameter names follow timm's ``Attention`` (``qkv``, ``proj``) so weights map one to one.
    ``fused=False`` uses :func:`scaled_dot_product_attention` above; ``fused=True`` uses
    ``torch.nn.functional.scaled_dot_product_attention`` (whichever backend torch selects, or the one
    chosen with ``torch.nn.attention.sdpa_kernel``).
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True, fused: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.fused = fused
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim)  # (B, N, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, h, N, d)
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        else:
            y = scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(B, N, C)  # (B, N, h·d): heads concatenated
        return self.proj(y)
