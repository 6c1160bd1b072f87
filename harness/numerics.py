"""How two implementations are compared numerically: errors, the tolerance rule of each dtype, and the
helpers every comparison shares (casting a model, capturing stage outputs, pinning an attention backend).

Rules (relative error ‖a − b‖ / ‖b‖, computed in float64):
  float64: ≤ 1e-12 between reference and library.
  float32: ≤ 1e-5 between reference and library (outputs); gradients, which sum over a whole batch and
           every path through the network, are judged like low precision below, against a float64 truth.
  bfloat16 / float16 (and float32 gradients): the reference's error against a float64 ground truth (the
           library run in float64) is at most 2× the library's own error against it (FlashAttention's test
           rule), made sound for small outputs in two ways:
           - the library's error is floored at the dtype's unit roundoff u = eps/2, the error of merely
             rounding the exact result to the dtype (a library result that lands by luck within 0.1 u of
             the truth does not fail a reference that lands within 1 u);
           - the factor 2 is widened by w(n) = sqrt(F⁻¹(0.999; n, n)), the 99.9% quantile of the ratio of two
             error norms drawn independently with the same spread over n elements: 1.01 for 100,000 elements
             (a block's output), 1.37 for 100, 3.2 for a 3×3 logits matrix and 637 for a scalar. Two equally
             accurate implementations then fail a row with probability 0.1% whatever its size, where the bare
             2× rule fails a 9-element row 2.5% of the time and a scalar 30%. A scalar is thus judged against
             gross error only; the loss function itself is judged on identical inputs (agreement_clip_loss),
             where the reference computes in float32 and its error is far below either bound.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

TOL = {"float64": 1e-12, "float32": 1e-5}
LOW_PRECISION = ("bfloat16", "float16")
DTYPES = ("float64", "float32", "bfloat16", "float16")
BACKENDS = ("math", "flash_attention", "efficient_attention", "cudnn_attention")


def dtype_of(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: choose from {', '.join(DTYPES)}")
    return getattr(torch, name)


def unit_roundoff(dtype: str | torch.dtype) -> float:
    """u = eps / 2: the relative error of rounding an exact value to `dtype`."""
    return torch.finfo(dtype_of(dtype) if isinstance(dtype, str) else dtype).eps / 2


def errors(ref: torch.Tensor, lib: torch.Tensor) -> dict:
    """max |Δ|, ‖Δ‖/‖lib‖ and cosine similarity, computed in float64."""
    ref, lib = ref.detach().double().flatten(), lib.detach().double().flatten()
    diff = ref - lib
    return {
        "max_abs": diff.abs().max().item(),
        "rel_err": (diff.norm() / lib.norm().clamp_min(1e-300)).item(),
        "cosine": F.cosine_similarity(ref, lib, dim=0, eps=1e-300).item(),
    }


TRUTH_RULE = "ref err vs float64 <= 2 w(n) max(library err, u)"


def widening(n: int) -> float:
    """w(n) = sqrt(F⁻¹(0.999; n, n)): how far the norm of one n-element error can exceed another's by chance
    when both are drawn with the same spread (99.9% quantile of the F distribution)."""
    from scipy.stats import f

    return float(f.ppf(0.999, n, n)) ** 0.5


def verdict(dtype: str, ref: torch.Tensor, lib: torch.Tensor, truth: torch.Tensor | None = None,
            tol: float | None = None) -> dict:
    """Errors of ref against lib, and pass/fail under the rule of `dtype`: a fixed relative tolerance (float64,
    float32; `tol` overrides it), or, when a float64 `truth` is given (low precision always), the 2× rule."""
    row = errors(ref, lib)
    if truth is None:
        if dtype not in TOL:
            raise ValueError(f"{dtype} is judged against a float64 truth: pass `truth`")
        tol = tol or TOL[dtype]
        row.update(tolerance=tol, rule=f"rel_err <= {tol:g}", passed=row["rel_err"] <= tol)
        return row
    ref_err = errors(ref, truth)["rel_err"]
    lib_err = errors(lib, truth)["rel_err"]
    w = widening(lib.numel())
    bound = 2 * w * max(lib_err, unit_roundoff(dtype))
    row.update(ref_err_vs_fp64=ref_err, lib_err_vs_fp64=lib_err, n_elements=lib.numel(), widening=w,
               tolerance=bound, rule=TRUTH_RULE, passed=ref_err <= bound)
    return row


def cast(module: nn.Module, dtype: str | torch.dtype) -> nn.Module:
    """A copy of `module` in `dtype`; the float64 master is never rounded in place. Each floating-point parameter
    and buffer is converted straight into the new dtype (what `.to(dtype)` does to it) instead of being copied
    first in the master's dtype: a float32 copy of a float64 ViT-L writes 1.2 GB, not 2.4 + 1.2 GB."""
    dtype = dtype_of(dtype) if isinstance(dtype, str) else dtype
    memo = {}
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point():
            converted = t.detach().to(dtype, copy=True)
            memo[id(t)] = nn.Parameter(converted, t.requires_grad) if isinstance(t, nn.Parameter) else converted
    return copy.deepcopy(module, memo).to(dtype)


@torch.no_grad()
def capture(stages: list[tuple[str, nn.Module]], fn: Callable[[], dict]) -> dict[str, torch.Tensor]:
    """fn()'s outputs plus the output of every named module, captured with forward hooks."""
    out: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, _inputs, output):
            output = output[0] if isinstance(output, tuple) else output
            out[name] = output.detach().clone()
        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in stages]
    try:
        out.update(fn())
    finally:
        for h in hooks:
            h.remove()
    return out


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


@contextlib.contextmanager
def exact_float32():
    """TF32 off for matmuls and cuDNN convolutions while comparing (on a GPU, torch lets cuDNN convolutions use
    TF32 by default: a timm patch embedding is a Conv2d and the reference's a Linear, so the two would round
    differently). A no-op on a CPU."""
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv


def sweep(
    lib_master: nn.Module,
    to_reference: Callable[..., nn.Module],
    run: Callable[[nn.Module, torch.dtype], dict[str, torch.Tensor]],
    outputs: list[str],
    dtypes: list[str],
    device: torch.device,
    library: str,
) -> list[dict]:
    """Reference vs library for each dtype and attention backend.

    `run(model, dtype)` returns named tensors; the names in `outputs` become rows of their own (check=name),
    every other name is a stage (a block) and becomes a 'block' row. The library model is the float64 master
    cast to each dtype (a copy; in float64 the master itself); the reference is converted from it, sharing its
    weights (`to_reference(model, copy=False)`: both models only run forward here).
    """
    lib_master = lib_master.double()  # float32 weights are exact in float64
    truth = run(lib_master, torch.float64) if any(d in LOW_PRECISION for d in dtypes) else None
    rows = []
    for dtype in dtypes:
        lib_model = lib_master if dtype == "float64" else cast(lib_master, dtype)
        lib = truth if dtype == "float64" and truth is not None else run(lib_model, dtype_of(dtype))
        ref = to_reference(lib_model, copy=False)
        for backend in ["explicit"] + available_backends(device, dtype_of(dtype)):
            ref.set_fused_attn(backend != "explicit")
            base = {"dtype": dtype, "backend": backend, "library": library}
            try:
                with backend_context(backend):
                    got = run(ref, dtype_of(dtype))
            except RuntimeError as e:  # a backend that refuses this shape or dtype
                rows.append({**base, "check": outputs[0], "result": "skipped", "note": str(e).splitlines()[0][:200]})
                continue
            stages = [k for k in lib if k not in outputs]
            low = dtype in LOW_PRECISION
            stage_rows = [{**base, "check": "block", "stage": k,
                           **verdict(dtype, got[k], lib[k], truth[k] if low else None)} for k in stages]
            out_rows = [{**base, "check": k, **verdict(dtype, got[k], lib[k], truth[k] if low else None)}
                        for k in outputs]
            failing = [r["stage"] for r in stage_rows if not r["passed"]]
            for r in out_rows:
                r["first_failing_stage"] = failing[0] if failing else "none"
                if r["check"] == "logits":
                    r["top1_agree"] = (got["logits"].argmax(-1) == lib["logits"].argmax(-1)).float().mean().item()
            rows += out_rows + stage_rows
        del ref
    return rows


def compare_gradients(lib_master: nn.Module, to_reference: Callable[[nn.Module], nn.Module],
                      to_reference_names: Callable[[dict, object], dict], loss: Callable[[nn.Module, torch.dtype],
                                                                                      torch.Tensor],
                      dtypes: list[str], library: str) -> list[dict]:
    """Gradients of `loss(model, dtype)` for every parameter, reference vs library, in float64 and float32.

    float64: relative error ≤ 1e-12 between the two. float32: each side's error against the library's float64
    gradients, by the 2× rule (harness.numerics). `to_reference_names(grads, ref.config)` maps the library's
    names and layouts onto the reference's (the converter's state_dict mapping)."""
    lib_master = lib_master.double()

    def grads(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        loss(model, dtype).backward()
        return {n: p.grad for n, p in model.named_parameters()}

    rows, truth = [], None
    for dtype in [d for d in ("float64", "float32") if d in dtypes]:
        lib_model = cast(lib_master, dtype)
        ref = to_reference(lib_model)
        ref_grads = grads(ref, dtype_of(dtype))
        lib_grads = to_reference_names(grads(lib_model, dtype_of(dtype)), ref.config)
        if dtype == "float64":
            truth = {n: g.clone() for n, g in lib_grads.items()}
        elif truth is None:  # float32 alone: the float64 truth is still needed
            truth = to_reference_names(grads(cast(lib_master, "float64"), torch.float64), ref.config)
        use_truth = dtype != "float64"
        per_param = {n: verdict(dtype, ref_grads[n], lib_grads[n], truth[n] if use_truth else None)
                     for n in lib_grads}
        worst = max(per_param, key=lambda n: per_param[n]["rel_err"])
        flat = [torch.cat([g[n].flatten() for n in lib_grads]) for g in (ref_grads, lib_grads, truth)]
        failing = [n for n, r in per_param.items() if not r["passed"]]
        rows.append({"check": "gradients", "dtype": dtype, "backend": "explicit", "library": library,
                     "n_params": len(per_param), **verdict(dtype, flat[0], flat[1], flat[2] if use_truth else None),
                     "worst_param": worst, "worst_param_rel_err": per_param[worst]["rel_err"],
                     "params_failing": len(failing), "first_failing_stage": failing[0] if failing else "none"})
    return rows
