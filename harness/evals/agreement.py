"""Numerical agreement of the reference implementations with timm and torch.

Tolerances (relative error ‖ref − lib‖ / ‖lib‖):
  float64 ≤ 1e-12, float32 ≤ 1e-5;
  bfloat16 / float16: the reference's error against a float64 ground truth (the library run in float64)
  is at most 2× the library's own error against it (FlashAttention's test rule).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..convert.timm import convert_state_dict, from_timm
from ..models import image_batch, load_timm
from ..reference.attention import MultiHeadAttention, scaled_dot_product_attention
from ..runner import Context, Table

TOL = {"float64": 1e-12, "float32": 1e-5}
LOW_PRECISION = ("bfloat16", "float16")
BACKENDS = ("math", "flash_attention", "efficient_attention", "cudnn_attention")


def dtype_of(name: str) -> torch.dtype:
    return getattr(torch, name)


def errors(ref: torch.Tensor, lib: torch.Tensor) -> dict:
    """max |Δ|, ‖Δ‖/‖lib‖ and cosine similarity, computed in float64."""
    ref, lib = ref.detach().double().flatten(), lib.detach().double().flatten()
    diff = ref - lib
    return {
        "max_abs": diff.abs().max().item(),
        "rel_err": (diff.norm() / lib.norm().clamp_min(1e-300)).item(),
        "cosine": F.cosine_similarity(ref, lib, dim=0, eps=1e-300).item(),
    }


def verdict(dtype: str, ref: torch.Tensor, lib: torch.Tensor, truth: torch.Tensor | None = None) -> dict:
    """Errors of ref against lib, and pass/fail under the tolerance rule of `dtype`."""
    row = errors(ref, lib)
    if dtype in TOL:
        tol = TOL[dtype]
        row.update(tolerance=tol, rule=f"rel_err <= {tol:g}", passed=row["rel_err"] <= tol)
    else:
        ref_err = errors(ref, truth)["rel_err"]
        lib_err = errors(lib, truth)["rel_err"]
        row.update(ref_err_vs_fp64=ref_err, lib_err_vs_fp64=lib_err, tolerance=2 * lib_err,
                   rule="ref err vs float64 <= 2x library err", passed=ref_err <= 2 * lib_err)
    return row


def available_backends(device: torch.device, dtype: torch.dtype) -> list[str]:
    """The torch SDPA backends that run on this device and dtype (probed, not assumed)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    found = []
    q = torch.randn(1, 2, 8, 64, device=device).to(dtype)
    for name in BACKENDS:
        try:
            with sdpa_kernel([getattr(SDPBackend, name.upper())]):
                F.scaled_dot_product_attention(q, q, q)
            found.append(name)
        except RuntimeError:
            pass
    return found


def backend_context(backend: str):
    """A context that pins torch's SDPA to one backend ('explicit' and 'default' leave it alone)."""
    if backend in ("explicit", "default"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, backend.upper())])


# ---------------------------------------------------------------------------------------------------- units


def units(config: dict, ctx: Context) -> list[str]:
    out = ["attention"] if config.get("attention") else []
    out += [f"model:{m}" for m in config["models"]]
    out += [f"gradients:{m}" for m in config.get("gradient_models", [])]
    return out


def run_unit(unit: str, config: dict, ctx: Context) -> list[dict]:
    kind, _, name = unit.partition(":")
    dtypes = _dtypes(config, ctx.device)
    if kind == "attention":
        return attention_rows(config["attention"], dtypes, ctx.device, ctx.seed)
    weights = config.get("weight_files", {}).get(name, config.get("weights", "random"))
    model = load_timm(name, weights, seed=ctx.seed).to(ctx.device)
    x = image_batch(model, config["photos"], config["random_inputs"], ctx.seed).to(ctx.device)
    common = {"model": name, "weights": weights if weights in ("random", "pretrained") else "file"}
    if kind == "model":
        return [{**common, **r} for r in model_rows(model, x, dtypes, ctx.device)]
    if kind == "gradients":
        return [{**common, **r} for r in gradient_rows(model, x, dtypes)]
    raise ValueError(f"unknown unit {unit!r}")


def _dtypes(config: dict, device: torch.device) -> list[str]:
    dtypes = list(config["dtypes"])
    if device.type == "cuda":
        dtypes += [d for d in config.get("gpu_dtypes", []) if d not in dtypes]
    return dtypes


# ------------------------------------------------------------------------------------------ whole models


def _cast(module: nn.Module, dtype: str | torch.dtype) -> nn.Module:
    """A copy of `module` in `dtype`; the float64 master is never rounded in place."""
    return copy.deepcopy(module).to(dtype_of(dtype) if isinstance(dtype, str) else dtype)


def _stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [("patch_embed", model.patch_embed)] + [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]


@torch.no_grad()
def _run_with_stages(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits plus the output of the patch embedding and of every block, captured with forward hooks."""
    out: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, o.detach().clone()))
             for n, m in _stages(model)]
    try:
        out["logits"] = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def model_rows(model: nn.Module, x: torch.Tensor, dtypes: list[str], device: torch.device) -> list[dict]:
    """For each dtype and attention backend: reference vs timm on logits and after every block."""
    model = model.double()  # the master copy: float32 weights are exact in float64
    truth = _run_with_stages(model, x.double()) if any(d in LOW_PRECISION for d in dtypes) else None
    rows = []
    for dtype in dtypes:
        lib_model = _cast(model, dtype)
        xd = x.to(dtype_of(dtype))
        lib = _run_with_stages(lib_model, xd)
        ref = from_timm(lib_model)
        for backend in ["explicit"] + available_backends(device, dtype_of(dtype)):
            ref.set_fused_attn(backend != "explicit")
            base = {"check": "logits", "dtype": dtype, "backend": backend, "library": "timm", "n_inputs": len(x)}
            try:
                with backend_context(backend):
                    got = _run_with_stages(ref, xd)
            except RuntimeError as e:  # a backend that refuses this shape or dtype
                rows.append({**base, "result": "skipped", "note": str(e).splitlines()[0][:200]})
                continue
            stage_rows = []
            for stage in [s for s, _ in _stages(ref)] + ["logits"]:
                t = truth[stage] if truth else None
                stage_rows.append({**base, "check": "block", "stage": stage,
                                   **verdict(dtype, got[stage], lib[stage], t)})
            failing = [r["stage"] for r in stage_rows if not r["passed"]]
            top1 = (got["logits"].argmax(-1) == lib["logits"].argmax(-1)).float().mean().item()
            logits = stage_rows.pop()
            rows.append({**logits, "check": "logits", "top1_agree": top1,
                         "first_failing_stage": failing[0] if failing else "none"})
            rows += stage_rows
        del ref
    return rows


def gradient_rows(model: nn.Module, x: torch.Tensor, dtypes: list[str]) -> list[dict]:
    """Parameter gradients of a cross-entropy loss: reference vs timm, every parameter mapped by the converter."""
    rows = []
    labels = torch.arange(len(x), device=x.device) % max(model.num_classes, 1)
    model = model.double()
    for dtype in [d for d in dtypes if d in TOL]:  # gradients in float64 / float32
        lib_model = _cast(model, dtype)
        ref = from_timm(lib_model)
        xd = x.to(dtype_of(dtype))
        grads = []
        for m in (lib_model, ref):
            m.zero_grad(set_to_none=True)
            loss = F.cross_entropy(m(xd), labels)
            loss.backward()
            grads.append({n: p.grad for n, p in m.named_parameters()})
        lib_grads = convert_state_dict(grads[0], ref.config)  # timm names and layouts -> reference
        per_param = {n: verdict(dtype, grads[1][n], lib_grads[n]) for n in lib_grads}
        worst = max(per_param, key=lambda n: per_param[n]["rel_err"])
        flat_ref = torch.cat([grads[1][n].flatten() for n in lib_grads])
        flat_lib = torch.cat([lib_grads[n].flatten() for n in lib_grads])
        rows.append({"check": "gradients", "dtype": dtype, "backend": "explicit", "library": "timm",
                     "n_inputs": len(x), "n_params": len(per_param), **verdict(dtype, flat_ref, flat_lib),
                     "worst_param": worst, "worst_param_rel_err": per_param[worst]["rel_err"],
                     "first_failing_stage": "none"})
    return rows


# ------------------------------------------------------------------------------------------ attention alone


def _masks(kind: str, B: int, N: int, device) -> tuple[torch.Tensor | None, bool, torch.Tensor | None]:
    """(keep-mask for sdpa (B,1,1,N) or None, is_causal, key_padding_mask for nn.MultiheadAttention)."""
    if kind == "none":
        return None, False, None
    if kind == "causal":
        return None, True, None
    lengths = torch.tensor([N] + [max(1, N - (N // 3) * (i + 1) // (B - 1)) for i in range(B - 1)], device=device)
    keep = torch.arange(N, device=device)[None, :] < lengths[:, None]  # (B, N)
    return keep[:, None, None, :], False, ~keep


def attention_rows(cfg: dict, dtypes: list[str], device: torch.device, seed: int) -> list[dict]:
    """Reference attention vs F.scaled_dot_product_attention, nn.MultiheadAttention and timm's Attention."""
    from timm.layers import Attention as TimmAttention

    rows = []
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, d = cfg["batch"], cfg["head_dim"]
    for N in cfg["seq_lens"]:
        for h in cfg["heads"]:
            dim = h * d
            q, k, v = (torch.randn(B, h, N, d, generator=g, dtype=torch.float64).to(device) for _ in range(3))
            x = torch.randn(B, N, dim, generator=g, dtype=torch.float64).to(device)
            torch.manual_seed(seed)
            ref_mha = MultiHeadAttention(dim, h, qkv_bias=True).to(device).double().eval()
            torch_mha = nn.MultiheadAttention(dim, h, batch_first=True).to(device).double().eval()
            timm_attn = TimmAttention(dim, num_heads=h, qkv_bias=True).to(device).double().eval()
            with torch.no_grad():
                torch_mha.in_proj_weight.copy_(ref_mha.qkv.weight)
                torch_mha.in_proj_bias.copy_(ref_mha.qkv.bias)
                torch_mha.out_proj.weight.copy_(ref_mha.proj.weight)
                torch_mha.out_proj.bias.copy_(ref_mha.proj.bias)
                timm_attn.load_state_dict(ref_mha.state_dict())
            for mask_kind in cfg["masks"]:
                keep, causal, pad = _masks(mask_kind, B, N, device)
                causal_bool = torch.ones(N, N, dtype=torch.bool, device=device).triu(1) if causal else None

                def sdpa_lib(dt, keep=keep, causal=causal):
                    return F.scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt), attn_mask=keep, is_causal=causal)

                def sdpa_ref(dt, keep=keep, causal=causal):
                    return scaled_dot_product_attention(q.to(dt), k.to(dt), v.to(dt), attn_mask=keep, is_causal=causal)

                def mha_ref(dt, keep=keep, causal=causal):
                    return _cast(ref_mha, dt)(x.to(dt), attn_mask=keep, is_causal=causal)

                def mha_torch(dt, pad=pad, causal_bool=causal_bool):
                    return _cast(torch_mha, dt)(x.to(dt), x.to(dt), x.to(dt), key_padding_mask=pad,
                                                attn_mask=causal_bool, need_weights=False)[0]

                def timm_fn(fused):
                    timm_attn.fused_attn = fused

                    def run(dt, keep=keep, causal=causal, module=copy.deepcopy(timm_attn)):
                        return _cast(module, dt)(x.to(dt), attn_mask=keep, is_causal=causal)
                    return run

                pairs: list[tuple[str, Callable, Callable]] = [
                    ("reference sdpa vs F.scaled_dot_product_attention", sdpa_ref, sdpa_lib),
                    ("reference MultiHeadAttention vs nn.MultiheadAttention", mha_ref, mha_torch),
                    ("reference MultiHeadAttention vs timm Attention (fused)", mha_ref, timm_fn(True)),
                    ("reference MultiHeadAttention vs timm Attention (manual)", mha_ref, timm_fn(False)),
                ]
                for comparison, ref_fn, lib_fn in pairs:
                    with torch.no_grad():
                        truth = lib_fn(torch.float64)
                        for dtype in dtypes:
                            dt = dtype_of(dtype)
                            r = verdict(dtype, ref_fn(dt), lib_fn(dt), truth)
                            rows.append({"check": "attention", "comparison": comparison, "seq_len": N, "heads": h,
                                         "head_dim": d, "mask": mask_kind, "dtype": dtype, **r})
    return rows


# ------------------------------------------------------------------------------------------------ tables


def _result(df: pd.DataFrame) -> pd.Series:
    result = df["passed"].map({True: "pass", False: "fail"})
    return result.where(df["result"] != "skipped", "skipped") if "result" in df else result


def tables(rows: list[dict], config: dict) -> list[Table]:
    df = pd.DataFrame(rows)
    df["result"] = _result(df) if "passed" in df else "skipped"
    note = __doc__.split("\n", 2)[2]
    out = []
    main = df[df["check"].isin(["logits", "gradients"])].reset_index(drop=True)
    cols = ["model", "weights", "check", "dtype", "backend", "n_inputs", "max_abs", "rel_err", "cosine",
            "top1_agree", "rule", "result", "first_failing_stage"]
    cols += [c for c in ("worst_param", "worst_param_rel_err") if c in main]
    out.append(Table("agreement", main, "Agreement: reference ViT vs timm", 
                     "reference ViT vs timm: logits and gradients, per dtype and attention backend",
                     [c for c in cols if c in main], note))
    blocks = df[df["check"] == "block"].reset_index(drop=True)
    if len(blocks):
        out.append(Table("agreement_blocks", blocks, "Agreement after every block: reference ViT vs timm",
                         "per-stage (patch embedding, each block, logits) errors of the reference vs timm",
                         ["model", "dtype", "backend", "stage", "max_abs", "rel_err", "cosine", "rule", "result"],
                         note))
    attn = df[df["check"] == "attention"].reset_index(drop=True)
    if len(attn):
        out.append(Table("agreement_attention", attn, "Agreement of attention alone",
                         "reference attention vs F.scaled_dot_product_attention, nn.MultiheadAttention, timm Attention",
                         ["comparison", "seq_len", "heads", "mask", "dtype", "max_abs", "rel_err", "rule", "result"],
                         note))
    return out
