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
             (a block's output), 1.10 for 1,024, 1.48 for 64. The rule compares against 2·w(n), not w(n), so two
             equally accurate implementations (errors of the same spread) fail a row only when one error norm
             exceeds the other 2·w(n)-fold: with probability P(F(n, n) > 4·w(n)²) (false_fail_rate), 7.5e-16 at
             64 elements and far smaller above (3.3e-6 at 9, were so few allowed). The widening guards the
             factor 2 itself, so that a reference up to 2× less accurate than the library passes whatever n.
           Such a verdict needs at least MIN_ELEMENTS = 64 elements (w ≤ 1.5): on fewer, w grows without bound
           (3.2 for 9 elements, 637 for a scalar) and the row could pass a reference several times less
           accurate than the library. verdict() refuses fewer: a loss is judged by its per-example terms, a
           parameter's gradient with the other parameters of its stage.

Power: every verdict row states `power`, the relative size of an error added to the reference's output
(‖δ‖ / ‖reference‖) that the row fails whatever the error's direction: the row's tolerance plus the error it
measured (by the triangle inequality the planted error can cancel no more than the measured one). A bug that
moves an output by more than its power fails that row; tests/test_verdicts.py plants errors of twice the
power into each family of row and dtype and sees each fail.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

TOL = {"float64": 1e-12, "float32": 1e-5}
MIN_ELEMENTS = 64  # the fewest elements a verdict against a float64 truth takes: w(64) = 1.48
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


def false_fail_rate(n: int) -> float:
    """The chance that the low-precision rule fails a reference exactly as accurate as the library on n elements:
    the squared ratio of two error norms of the same spread is F(n, n)-distributed, and the rule fails when the
    ratio exceeds 2·w(n) (scipy's F survival function at 4·w(n)²)."""
    from scipy.stats import f

    return float(f.sf(4 * widening(n) ** 2, n, n))


def verdict(dtype: str, ref: torch.Tensor, lib: torch.Tensor, truth: torch.Tensor | None = None,
            tol: float | None = None) -> dict:
    """Errors of ref against lib, and pass/fail under the rule of `dtype`: a fixed relative tolerance (float64,
    float32; `tol` overrides it), or, when a float64 `truth` is given (low precision always), the 2× rule, on at
    least MIN_ELEMENTS elements. Every row states its `power` (module docstring)."""
    row = errors(ref, lib)
    if truth is None:
        if dtype not in TOL:
            raise ValueError(f"{dtype} is judged against a float64 truth: pass `truth`")
        tol = tol or TOL[dtype]
        row.update(tolerance=tol, rule=f"rel_err <= {tol:g}", passed=row["rel_err"] <= tol,
                   power=tol + row["rel_err"])
        return row
    if lib.numel() < MIN_ELEMENTS:
        raise ValueError(f"a verdict against a float64 truth on {lib.numel()} element(s): at least {MIN_ELEMENTS} "
                         f"are needed for the 2x rule to mean anything (w({lib.numel()}) = "
                         f"{widening(lib.numel()):.3g}); judge more elements at once (more inputs, per-example "
                         "loss terms, a stage's parameters together)")
    ref_err = errors(ref, truth)["rel_err"]
    lib_err = errors(lib, truth)["rel_err"]
    w = widening(lib.numel())
    bound = 2 * w * max(lib_err, unit_roundoff(dtype))
    row.update(ref_err_vs_fp64=ref_err, lib_err_vs_fp64=lib_err, n_elements=lib.numel(), widening=w,
               tolerance=bound, rule=TRUTH_RULE, passed=ref_err <= bound, power=bound + ref_err)
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


def _tower(name: str) -> str:
    first = name.split(".")[0]
    return first if first in ("visual", "text") else ""


def gradient_stages(names: list[str], sizes: dict[str, int],
                    tower: Callable[[str], str] = _tower) -> dict[str, list[str]]:
    """Parameter names (in the model's order) grouped into the stages their gradients are judged by, in forward
    order: each block (the name up to its index: blocks.3, visual.blocks.3, text.blocks.0, a hybrid's
    patch_embed.backbone.stages.1) and, per tower, the parameters before its first block and after its last
    (embeddings; final norm, head, projection); `tower(name)` names a parameter's tower ("" for none). A group of
    fewer than MIN_ELEMENTS elements (a CLIP's logit_scale) joins the group before it, or after it when it is the
    first: no stage is judged on a handful of numbers."""
    groups: dict[str, list[str]] = {}
    started: set[str] = set()  # towers whose blocks have begun
    where = tower
    for name in names:
        tokens = name.split(".")
        tower = where(name)
        index = next((i for i, t in enumerate(tokens[:-1]) if t.isdigit() and i > 0), None)
        if index is not None:
            stage = ".".join(tokens[: index + 1])
            started.add(tower)
        else:
            stage = (f"{tower} " if tower else "") + ("(after the blocks)" if tower in started else
                                                      "(before the blocks)")
        groups.setdefault(stage, []).append(name)
    stages = list(groups.items())
    i = 0
    while len(stages) > 1 and i < len(stages):
        if sum(sizes[n] for n in stages[i][1]) < MIN_ELEMENTS:
            j = i - 1 if i > 0 else 1
            keep = stages[j][0]
            merged = stages[j][1] + stages[i][1] if j < i else stages[i][1] + stages[j][1]
            stages[min(i, j)] = (keep, merged)
            del stages[max(i, j)]
            i = 0
            continue
        i += 1
    return dict(stages)


def gradient_verdicts(dtype: str, ref: dict[str, torch.Tensor], lib: dict[str, torch.Tensor],
                      truth: dict[str, torch.Tensor] | None, tower: Callable[[str], str] = _tower,
                      ) -> tuple[dict, dict[str, dict], dict[str, float], dict[str, list[str]]]:
    """Gradients judged over all parameters together and stage by stage (gradient_stages, in `lib`'s order), and
    each parameter's relative error (for naming the worst; not a verdict: one parameter can hold a single number).
    `truth` (the library's float64 gradients) for float32 and low precision, None for float64. Returns (the whole
    model's verdict, {stage: verdict} in forward order, {parameter: relative error}, {stage: its parameters})."""
    names = list(lib)

    def flat(d, keys):
        return torch.cat([d[k].flatten() for k in keys])

    whole = verdict(dtype, flat(ref, names), flat(lib, names), None if truth is None else flat(truth, names))
    stages = gradient_stages(names, {n: lib[n].numel() for n in names}, tower)
    per_stage = {s: verdict(dtype, flat(ref, keys), flat(lib, keys), None if truth is None else flat(truth, keys))
                 for s, keys in stages.items()}
    base = truth if truth is not None else lib
    per_param = {n: errors(ref[n], base[n])["rel_err"] for n in names}
    return whole, per_stage, per_param, stages


def first_backward(per_stage: dict[str, dict]) -> str | None:
    """The failing stage the backward pass reaches first: the last failing one in forward order (a bug in a block's
    backward corrupts its own gradients and every earlier stage's, never a later one's)."""
    failing = [s for s, r in per_stage.items() if not r["passed"]]
    return failing[-1] if failing else None


def compare_gradients(lib_master: nn.Module, to_reference: Callable[[nn.Module], nn.Module],
                      to_reference_names: Callable[[dict, object], dict], loss: Callable[[nn.Module, torch.dtype],
                                                                                      torch.Tensor],
                      dtypes: list[str], library: str) -> list[dict]:
    """Gradients of `loss(model, dtype)` for every parameter, reference vs library, in float64 and float32: one row
    for all parameters, one per stage (harness.methods.numerics.gradient_stages).

    float64: relative error ≤ 1e-12 between the two. float32: each side's error against the library's float64
    gradients, by the 2× rule (harness.methods.numerics). `to_reference_names(grads, ref.config)` maps the library's
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
        lib_grads = {n: lib_grads[n] for n in ref_grads}  # the reference's order: its stages in forward order
        whole, per_stage, per_param, _ = gradient_verdicts(dtype, ref_grads, lib_grads,
                                                           truth if dtype != "float64" else None)
        worst = max(per_param, key=per_param.get)
        first = first_backward(per_stage)
        base = {"dtype": dtype, "backend": "explicit", "library": library}
        rows.append({"check": "gradients", **base, "n_params": len(per_param), **whole, "worst_param": worst,
                     "worst_param_rel_err": per_param[worst],
                     "stages_failing": sum(not r["passed"] for r in per_stage.values()),
                     "first_failing_stage": first or "none"})
        rows += [{"check": "gradient_stage", **base, "stage": s, **r} for s, r in per_stage.items()]
    return rows
