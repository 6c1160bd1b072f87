"""Numerical agreement of the reference implementations with timm, open_clip, transformers and torch (rules:
harness.methods.numerics).

Tolerances (relative error ‖ref − lib‖ / ‖lib‖), from harness.methods.numerics:
  float64 ≤ 1e-12, float32 ≤ 1e-5 (outputs and every stage);
  bfloat16 / float16, and float32 gradients: the reference's error against a float64 ground truth (the library
  run in float64) is at most 2 w(n) × the library's own, the library's error floored at the dtype's unit
  roundoff u = eps/2 (FlashAttention's 2× rule, made sound for small outputs: w(n) = sqrt(F⁻¹(0.999; n, n)) is
  how far one n-element error norm exceeds another of equal spread by chance — 1.01 for a block's output, 1.10
  for a 32×32 logits matrix, 1.48 for 64 elements, the fewest any such row judges). The contrastive loss is
  judged by its per-example terms (2 per image–text pair, 32 pairs), gradients over all parameters and stage by
  stage. `tolerance` holds each row's bound, `power` the relative error of the reference's output the row
  fails whatever its direction (tolerance + the error measured). On a GPU, TF32 is off on both sides.
  bfloat16/float16 rows run on CPU too (every model on a GPU; the models in cpu_low_precision_models on a CPU,
  where those dtypes run ~16x slower than float32).
"""

from __future__ import annotations

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import models
from ..convert.timm import convert_state_dict, from_timm
from ..data.photos import image_batch
from ..infra.suite import ConfigError, Context, Table
from ..methods.numerics import (
    LOW_PRECISION,
    capture,
    cast,
    compare_gradients,
    dtype_of,
    exact_float32,
    false_fail_rate,
    sweep,
    verdict,
)
from ..reference.attention import MultiHeadAttention, online_softmax_attention, scaled_dot_product_attention

# ---------------------------------------------------------------------------------------------------- units


CPU_PROCESSES = True  # on a CPU: one-thread processes taking whole units are faster (run --processes)


def unit_cost(unit: str, config: dict) -> float:
    """A rough cost in seconds on one CPU core, for ordering units only (the runner starts long ones first): the
    CLIP units (both towers, low precision on a CPU) ~60 s, a ViT ~20 s, the rest a few seconds."""
    kind = unit.partition(":")[0]
    return {"clip": 60.0, "clip_gradients": 30.0, "model": 20.0, "attention": 30.0, "hf": 30.0}.get(kind, 5.0)

def _specs(config: dict) -> dict[str, dict[str, models.ModelSpec]]:
    """The suite's models by list and id (harness.models names; the ViTs' default weights: config["weights"])."""
    clip = config.get("clip") or {}

    def by_id(declared, weights=None):
        return {s.id: s for s in (models.parse(m, weights) for m in declared)}

    clip_models = by_id(clip.get("models", []))
    towers = {k: models.parse(v) for k, v in clip.get("timm_towers", {}).items()}
    unknown = [k for k in towers if k not in clip_models]
    if unknown:
        raise ConfigError(f"clip.timm_towers names {', '.join(unknown)}: its keys are ids of models in clip.models "
                          f"({', '.join(clip_models) or 'none'})")
    hf = config.get("hf") or {}
    return {"model": by_id(config["models"], config.get("weights")),
            "hf": by_id(hf.get("models", [])), "hf_gradients": by_id(hf.get("gradient_models", [])),
            "gradients": by_id(config.get("gradient_models", []), config.get("weights")),
            "clip": clip_models, "clip_gradients": by_id(clip.get("gradient_models", [])),
            "clip_timm": {k: clip_models[k] for k in towers}, "timm_towers": towers}


def units(config: dict, ctx: Context) -> list[str]:
    specs = _specs(config)
    out = ["attention"] if config.get("attention") else []
    out += [f"model:{m}" for m in specs["model"]]
    out += [f"gradients:{m}" for m in specs["gradients"]]
    out += ["clip_loss"] if (config.get("clip") or {}).get("loss") else []
    out += [f"clip:{m}" for m in specs["clip"]]
    out += [f"clip_gradients:{m}" for m in specs["clip_gradients"]]
    out += [f"clip_timm:{m}={t.id}" for m, t in specs["timm_towers"].items()]
    out += [f"hf:{m}" for m in specs["hf"]] + [f"hf_gradients:{m}" for m in specs["hf_gradients"]]
    return out


def validate(config: dict, ctx: Context) -> None:
    """Every model and weight file checked before any work (harness.models.check), every dtype known, every model
    one with a converter to the reference (timm's and open_clip's ViTs)."""
    for dtype in config["dtypes"]:
        dtype_of(dtype)
    specs = _specs(config)
    for kind in ("model", "gradients", "clip", "clip_gradients", "clip_timm", "hf", "hf_gradients"):
        for spec in specs[kind].values():
            if not models.has_reference(spec):
                raise ConfigError(f"agreement compares a model with the reference converted from it: "
                                  f"{spec.string} has no converter (timm's and open_clip's ViTs, transformers' "
                                  "CLIPModel and ViTModel have)")
            models.check(spec)
    for spec in specs["timm_towers"].values():
        models.check(spec)


def run_unit(unit: str, config: dict, ctx: Context) -> list[dict]:
    with exact_float32():
        return _run_unit(unit, config, ctx)


def _run_unit(unit: str, config: dict, ctx: Context) -> list[dict]:
    kind, _, name = unit.partition(":")
    dtypes = _dtypes(config, ctx.device, name.partition("=")[0] or None)
    if kind == "attention":
        return attention_rows(config["attention"], dtypes, ctx.device, ctx.seed)
    if kind == "clip_loss":
        from . import agreement_clip

        return agreement_clip.loss_rows(config["clip"]["loss"], dtypes, ctx.device, ctx.seed)
    name, _, timm_name = name.partition("=")
    specs = _specs(config)
    spec = specs[kind][name]
    if kind.startswith("hf"):
        from . import agreement_hf

        hf = {**config, **(config.get("clip") or {}), **config["hf"]}
        rows = (agreement_hf.model_rows if kind == "hf" else agreement_hf.gradient_rows)(spec, hf, ctx, dtypes)
        return [{"model": name, "weights": spec.weights, **r} for r in rows]
    if kind.startswith("clip"):
        from . import agreement_clip

        clip = {**config, **config["clip"]}
        common = {"model": name, "weights": spec.weights if spec.weights == "random" else "pretrained"}
        if kind == "clip":
            rows = agreement_clip.model_rows(spec, clip, ctx, dtypes)
        elif kind == "clip_gradients":
            rows = agreement_clip.gradient_rows(spec, clip, ctx, dtypes)
        else:
            rows = agreement_clip.three_way_rows(spec, specs["timm_towers"][name], clip, ctx, dtypes)
        return [{**common, **r} for r in rows]
    resolved = models.resolve(spec, seed=ctx.seed, device=ctx.device)
    model = resolved.module
    x = image_batch(resolved.transform, model.patch_embed.img_size[0], config["photos"], config["random_inputs"],
                    ctx.seed).to(ctx.device)
    common = {"model": name, "weights": spec.weights if spec.weights in ("random", "pretrained") else "file"}
    if kind == "model":
        return [{**common, **r} for r in model_rows(model, x, dtypes, ctx.device)]
    if kind == "gradients":
        return [{**common, **r} for r in gradient_rows(model, x, dtypes)]
    raise ValueError(f"unknown unit {unit!r}")


def _dtypes(config: dict, device: torch.device, model: str | None) -> list[str]:
    """The suite's dtypes for one unit. bfloat16/float16 matmuls run ~16x slower than float32 on a CPU without
    native support, so on a CPU a whole model gets them only when listed in cpu_low_precision_models (attention
    alone and the loss always do); on a GPU every unit does."""
    dtypes = list(config["dtypes"])
    if device.type == "cuda" or model is None or model in config.get("cpu_low_precision_models", ()):
        return dtypes
    return [d for d in dtypes if d not in LOW_PRECISION]


# ------------------------------------------------------------------------------------------ whole models


def _stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The patch embedding, each block, and for a hybrid its CNN's stem and every stage (timm's bare-stem hybrids
    have the stem as their backbone; the reference always names it stem)."""
    stem = []
    backbone = getattr(model.patch_embed, "backbone", None)
    if backbone is not None:
        stem = [("stem", getattr(backbone, "stem", backbone))]
        stem += [(f"stem.stages.{i}", s) for i, s in enumerate(getattr(backbone, "stages", []))]
    return stem + [("patch_embed", model.patch_embed)] + [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]


def _run_with_stages(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits plus the output of the patch embedding and of every block."""
    return capture(_stages(model), lambda: {"logits": model(x)})


def model_rows(model: nn.Module, x: torch.Tensor, dtypes: list[str], device: torch.device) -> list[dict]:
    """Reference vs timm on logits and after the patch embedding and every block."""
    rows = sweep(model, from_timm, lambda m, dt: _run_with_stages(m, x.to(dt)), ["logits"], dtypes, device, "timm")
    return [{**r, "n_inputs": len(x)} for r in rows]


def gradient_rows(model: nn.Module, x: torch.Tensor, dtypes: list[str]) -> list[dict]:
    """Parameter gradients of a cross-entropy loss: reference vs timm, every parameter mapped by the converter."""
    labels = torch.arange(len(x), device=x.device) % max(model.num_classes, 1)
    rows = compare_gradients(model, from_timm, convert_state_dict,
                             lambda m, dt: F.cross_entropy(m(x.to(dt)), labels), dtypes, "timm")
    return [{**r, "n_inputs": len(x)} for r in rows]


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


def _attention_pairs(dt: torch.dtype, q, k, v, x, modules: dict[str, nn.Module], keep, causal, pad):
    """(comparison, reference output, library output) for each comparison, computed in dtype dt."""
    q, k, v, x = (t.to(dt) for t in (q, k, v, x))
    names = ("ref", "torch", "timm", "timm_manual")
    ref_mha, torch_mha, timm_fused, timm_manual = (cast(modules[n], dt) for n in names)
    causal_bool = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).triu(1) if causal else None
    ref_out = ref_mha(x, attn_mask=keep, is_causal=causal)
    online = []
    if keep is None:  # the online-softmax attention takes no mask, or causal; blocks of about N/3 keys
        online = [("reference online softmax vs F.scaled_dot_product_attention",
                   online_softmax_attention(q, k, v, is_causal=causal, block_size=max(1, -(-q.shape[-2] // 3))),
                   F.scaled_dot_product_attention(q, k, v, is_causal=causal))]
    return online + [
        ("reference sdpa vs F.scaled_dot_product_attention",
         scaled_dot_product_attention(q, k, v, attn_mask=keep, is_causal=causal),
         F.scaled_dot_product_attention(q, k, v, attn_mask=keep, is_causal=causal)),
        ("reference MultiHeadAttention vs nn.MultiheadAttention", ref_out,
         torch_mha(x, x, x, key_padding_mask=pad, attn_mask=causal_bool, need_weights=False)[0]),
        ("reference MultiHeadAttention vs timm Attention (fused)", ref_out,
         timm_fused(x, attn_mask=keep, is_causal=causal)),
        ("reference MultiHeadAttention vs timm Attention (manual)", ref_out,
         timm_manual(x, attn_mask=keep, is_causal=causal)),
    ]


def _attention_modules(dim: int, heads: int, device, seed: int) -> dict[str, nn.Module]:
    """The reference MultiHeadAttention and the library modules, all carrying its weights, in float64."""
    from timm.layers import Attention as TimmAttention

    torch.manual_seed(seed)
    ref = MultiHeadAttention(dim, heads, qkv_bias=True).to(device).double().eval()
    torch_mha = nn.MultiheadAttention(dim, heads, batch_first=True).to(device).double().eval()
    with torch.no_grad():
        torch_mha.in_proj_weight.copy_(ref.qkv.weight)
        torch_mha.in_proj_bias.copy_(ref.qkv.bias)
        torch_mha.out_proj.weight.copy_(ref.proj.weight)
        torch_mha.out_proj.bias.copy_(ref.proj.bias)
    timm_attn = {}
    for fused in (True, False):
        m = TimmAttention(dim, num_heads=heads, qkv_bias=True).to(device).double().eval()
        m.load_state_dict(ref.state_dict())
        m.fused_attn = fused
        timm_attn[fused] = m
    return {"ref": ref, "torch": torch_mha, "timm": timm_attn[True], "timm_manual": timm_attn[False]}


@torch.no_grad()
def attention_rows(cfg: dict, dtypes: list[str], device: torch.device, seed: int) -> list[dict]:
    """Reference attention vs F.scaled_dot_product_attention, nn.MultiheadAttention and timm's Attention."""
    rows = []
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, d = cfg["batch"], cfg["head_dim"]
    for N in cfg["seq_lens"]:
        for h in cfg["heads"]:
            q, k, v = (torch.randn(B, h, N, d, generator=g, dtype=torch.float64).to(device) for _ in range(3))
            x = torch.randn(B, N, h * d, generator=g, dtype=torch.float64).to(device)
            modules = _attention_modules(h * d, h, device, seed)
            for mask in cfg["masks"]:
                keep, causal, pad = _masks(mask, B, N, device)
                truth = _attention_pairs(torch.float64, q, k, v, x, modules, keep, causal, pad)
                for dtype in dtypes:
                    pairs = _attention_pairs(dtype_of(dtype), q, k, v, x, modules, keep, causal, pad)
                    for (comparison, ref, lib), (_, _, lib64) in zip(pairs, truth):
                        rows.append({"check": "attention", "comparison": comparison, "seq_len": N, "heads": h,
                                     "head_dim": d, "mask": mask, "dtype": dtype,
                                     **verdict(dtype, ref, lib, lib64 if dtype in LOW_PRECISION else None)})
    return rows


# ------------------------------------------------------------------------------------------------ tables


def _result(df: pd.DataFrame) -> pd.Series:
    result = df["passed"].map({True: "pass", False: "fail"})
    return result.where(df["result"] != "skipped", "skipped") if "result" in df else result


FAMILIES = {"logits": "model outputs", "features": "model outputs", "image_embedding": "model outputs",
            "text_embedding": "model outputs", "image_embedding_3way": "model outputs", "block": "blocks",
            "attention": "attention", "loss_terms": "loss", "clip_loss": "loss", "siglip_loss": "loss",
            "gradients": "gradients", "gradient_stage": "gradients"}
POWER_NOTE = ("`power`: the relative size of an error in the reference's output (‖δ‖ / ‖output‖) that a row fails "
              "whatever the error's direction — its tolerance plus the error it measured "
              "(harness/methods/numerics.py). A family's `max_power` is the largest over its rows: a bug that moves "
              "any output of the family by more fails its row. `CLIP logits` are the 32×32 image–text logits; "
              "`loss` the contrastive loss's per-example terms (in the CLIP rows and in agreement_clip_loss); "
              "`gradients` every parameter together and stage by stage. tests/test_verdicts.py plants errors of "
              "twice the power into each family and dtype and sees the rows fail.")


def power_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Rows per (family, dtype) with the largest and median power, and the rule."""
    if "power" not in df:
        return pd.DataFrame()
    judged = df[df["power"].notna()].copy()
    family = judged["check"].map(FAMILIES)
    clip_logits = (judged["check"] == "logits") & judged["unit"].astype(str).str.startswith(("clip:", "hf:"))
    judged["family"] = family.where(~clip_logits, "CLIP logits")
    order = {d: i for i, d in enumerate(("float64", "float32", "bfloat16", "float16"))}
    g = judged.groupby(["family", "dtype"], sort=False)
    out = pd.DataFrame({"rows": g.size(), "max_power": g["power"].max(), "median_power": g["power"].median(),
                        "failing": g["passed"].apply(lambda p: int((p == False).sum()))}).reset_index()  # noqa: E712
    return out.sort_values(["family", "dtype"], key=lambda c: c.map(order) if c.name == "dtype" else c,
                           kind="stable").reset_index(drop=True)


def _power_line(power: pd.DataFrame) -> str:
    parts = []
    for family, g in power.groupby("family", sort=False):
        parts.append(f"{family} " + ", ".join(f"{r.dtype} {r.max_power:.2g}" for r in g.itertuples()))
    return "; ".join(parts)


def stages(read) -> list[tuple[str, float]]:
    """(stage, seconds) of a run, from its own tables (`read(name)`: a table or None): the units by kind."""
    out = []
    main = read("agreement")
    if main is not None and "unit" in main:
        units = main.drop_duplicates("unit")
        for kind, seconds in units.groupby(units["unit"].str.partition(":")[0])["unit_seconds"].sum().items():
            out.append((f"units {kind}", float(seconds)))
    for extra in ("agreement_attention", "agreement_clip_loss"):
        t = read(extra)
        if t is not None and "unit_seconds" in t:
            out.append((f"units {t['unit'].iloc[0]}", float(t["unit_seconds"].iloc[0])))
    return out


def _present(df: pd.DataFrame, columns: list[str]) -> list[str]:
    return [c for c in columns if c in df]


def tables(rows: list[dict], config: dict) -> list[Table]:
    df = pd.DataFrame(rows)
    df["result"] = _result(df) if "passed" in df else "skipped"
    note = __doc__.split("\n", 2)[2]
    out = []
    main = df[~df["check"].isin(["block", "gradient_stage", "attention", "clip_loss", "siglip_loss"])]
    main = main.reset_index(drop=True)
    cols = ["model", "weights", "library", "check", "dtype", "backend", "n_inputs", "n_elements", "max_abs",
            "rel_err", "cosine", "top1_agree", "rule", "power", "result", "first_failing_stage", "worst_param",
            "worst_param_rel_err"]
    out.append(Table("agreement", main, "Agreement: reference ViT and CLIP vs timm, open_clip and transformers",
                     "reference ViT vs timm and reference CLIP vs open_clip (and timm's CLIP towers), both vs "
                     "transformers' ViTModel and CLIPModel: outputs, "
                     "loss terms and gradients per dtype and attention backend",
                     _present(main, cols), note))
    blocks = df[df["check"].isin(["block", "gradient_stage"])].reset_index(drop=True)
    if len(blocks):
        out.append(Table("agreement_blocks", blocks, "Agreement after every block, and gradients stage by stage",
                         "per-stage errors (patch embedding, each block of each tower) of the reference vs the "
                         "library, and the parameter gradients of each stage",
                         _present(blocks, ["model", "library", "check", "dtype", "backend", "stage", "n_elements",
                                           "max_abs", "rel_err", "cosine", "rule", "power", "result"]), note))
    loss = df[df["check"].isin(["clip_loss", "siglip_loss"])].reset_index(drop=True)
    if len(loss):
        out.append(Table("agreement_clip_loss", loss, "harness.clip_loss and siglip_loss vs open_clip's ClipLoss and "
                         "SigLipLoss",
                         "the symmetric contrastive loss vs open_clip's ClipLoss (2N terms a batch) and SigLIP's "
                         "pairwise sigmoid loss vs open_clip's SigLipLoss (N² terms a batch), batch sizes × logit "
                         "scales (× logit biases), judged by the per-example terms of several batches",
                         _present(loss, ["check", "library", "batch", "batches", "logit_scale", "logit_bias", "dtype",
                                         "n_elements", "loss_lib",
                                         "max_abs", "rel_err", "rule", "power", "result"]), note))
    power = power_summary(df)
    if len(power):
        out.append(Table("agreement_power", power, "The power of each family of verdict row, by dtype",
                         "the smallest relative error each family of agreement row is sure to catch, by dtype "
                         "(largest power over the family's rows): " + _power_line(power) + "; the low-precision "
                         "rule fails a reference exactly as accurate as the library with probability "
                         f"{false_fail_rate(64):.1e} on 64 elements (its smallest size; harness.methods.numerics."
                         "false_fail_rate, scipy's F distribution)",
                         ["family", "dtype", "rows", "max_power", "median_power", "failing"], POWER_NOTE))
    attn = df[df["check"] == "attention"].reset_index(drop=True)
    if len(attn):
        out.append(Table("agreement_attention", attn, "Agreement of attention alone",
                         "reference attention (explicit and online softmax) vs F.scaled_dot_product_attention, "
                         "nn.MultiheadAttention, timm Attention",
                         _present(attn, ["comparison", "seq_len", "heads", "mask", "dtype", "max_abs", "rel_err",
                                         "rule", "power", "result"]), note))
    return out
