import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import MultiHeadAttention, scaled_dot_product_attention


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def qkv(B=2, h=3, N=7, M=None, d=16, dtype=torch.float64):
    M = M or N
    q = torch.randn(B, h, N, d, dtype=dtype)
    return q, torch.randn(B, h, M, d, dtype=dtype), torch.randn(B, h, M, d, dtype=dtype)


def test_matches_the_formula_written_naively():
    q, k, v = qkv()
    scores = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(q.shape[-1])
    expected = torch.einsum("bhnm,bhmd->bhnd", scores.softmax(-1), v)
    assert rel(scaled_dot_product_attention(q, k, v), expected) < 1e-14


@pytest.mark.parametrize("N,M", [(7, 7), (50, 50), (197, 197), (5, 9), (1, 1)])
@pytest.mark.parametrize("mask", ["none", "causal", "bool", "additive"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_matches_torch_sdpa(N, M, mask, dtype, tol):
    q, k, v = qkv(N=N, M=M, dtype=dtype)
    kwargs = {}
    if mask == "causal":
        kwargs["is_causal"] = True
    elif mask == "bool":
        kwargs["attn_mask"] = torch.rand(N, M) > 0.3
        kwargs["attn_mask"][:, 0] = True  # every query sees at least one key
    elif mask == "additive":
        kwargs["attn_mask"] = torch.randn(2, 1, N, M, dtype=dtype)
    assert rel(scaled_dot_product_attention(q, k, v, **kwargs), F.scaled_dot_product_attention(q, k, v, **kwargs)) < tol


def test_fully_masked_row_gives_zeros_like_torch():
    q, k, v = qkv(N=4, M=6)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[2] = False
    out = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.isfinite(out).all()
    assert (out[:, :, 2] == 0).all()
    assert rel(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask)) < 1e-12


def test_mask_and_causal_together_is_an_error():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="either attn_mask or is_causal"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(7, 7, dtype=torch.bool), is_causal=True)


def test_gradients_match_torch_sdpa():
    q, k, v = (t.requires_grad_() for t in qkv())
    g_ref = torch.autograd.grad(scaled_dot_product_attention(q, k, v, is_causal=True).square().sum(), (q, k, v))
    g_lib = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True).square().sum(), (q, k, v))
    for a, b in zip(g_ref, g_lib):
        assert rel(a, b) < 1e-12


@pytest.mark.parametrize("heads", [1, 2, 4, 8, 16])
def test_mha_explicit_fused_and_torch_agree(heads):
    dim, N = 16 * heads, 50
    mha = MultiHeadAttention(dim, heads).double().eval()
    torch_mha = nn.MultiheadAttention(dim, heads, batch_first=True).double().eval()
    with torch.no_grad():
        torch_mha.in_proj_weight.copy_(mha.qkv.weight)
        torch_mha.in_proj_bias.copy_(mha.qkv.bias)
        torch_mha.out_proj.weight.copy_(mha.proj.weight)
        torch_mha.out_proj.bias.copy_(mha.proj.bias)
    x = torch.randn(2, N, dim, dtype=torch.float64)
    with torch.no_grad():
        explicit = mha(x)
        mha.fused = True
        fused = mha(x)
        lib = torch_mha(x, x, x, need_weights=False)[0]
    assert rel(explicit, lib) < 1e-12 and rel(fused, lib) < 1e-12


def test_mha_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(10, 3)


@pytest.mark.parametrize("N,M,block", [(197, 197, 64), (50, 50, 256), (5, 9, 2), (300, 300, 1), (130, 70, 32)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-13), (torch.float32, 1e-6)])
def test_online_softmax_attention_is_exact(N, M, block, causal, dtype, tol):
    from harness.reference import online_softmax_attention

    q, k, v = qkv(N=N, M=M, dtype=dtype)
    q = q * 4  # sharper softmax: the running maximum changes from block to block
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal)
    got = online_softmax_attention(q, k, v, is_causal=causal, block_size=block)
    assert got.dtype == dtype and rel(got.double(), expected) < tol

