"""Check your own implementation against timm, open_clip or transformers, and find where it first departs.

    report = harness.compare(my_vit, "timm:vit_small_patch16_224")       # or a timm / open_clip model
    print(report.summary)
    report.df                  # one row per stage × dtype × backend, and the gradients
    report.first_divergence    # the first stage past its tolerance, in forward order (None: none)

    python -m harness compare --candidate python:mypkg.models:build_vit --library timm:vit_small_patch16_224 \
        --out cmp/

1. The library's weights are carried into the candidate through `mapping`: a dict {candidate key: library key}
   (a library key may name one third of a fused qkv: "blocks.0.attn.qkv.weight[q]"), a callable
   library_state_dict -> candidate_state_dict, or None: then a mapping is proposed — names matched after common
   renames (ln_1 -> norm1, in_proj -> qkv, c_fc -> fc1, class_embedding -> cls_token, ...), within the same
   tower and block, fused q/k/v split for separate q, k, v layers, a Conv2d patch embedding reshaped for a
   Linear one (or the reverse), and what names leave open settled by shape — printed, and refused with an
   error naming the candidates where it stays ambiguous. Strict: every library tensor used once, every
   candidate tensor given one, every shape checked.
2. Stage by stage, without touching the candidate: forward hooks on every pair of modules that own
   corresponding parameters (patch embedding, each block, its norms, attention and MLP, the final norm, the head;
   both towers of a CLIP), and a pre-hook on the first block (`embed`: patch tokens, [CLS] and position
   embedding together). Errors after each stage in each dtype and attention backend, under harness.methods.numerics'
   rules (float64 ≤ 1e-12, float32 ≤ 1e-5, bfloat16/float16 against a float64 truth); gradients of a fixed
   random projection of the outputs with respect to every mapped parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from ..methods.numerics import (
    LOW_PRECISION,
    MIN_ELEMENTS,
    TOL,
    backend_context,
    cast,
    dtype_of,
    exact_float32,
    first_backward,
    gradient_verdicts,
    verdict,
)


class MappingError(ValueError):
    """The library's weights cannot be carried into the candidate as asked (or proposed)."""


# ------------------------------------------------------------------------------------------ names and roles
TOWERS = {"visual": {"visual", "vision", "image", "img", "vision_model", "image_encoder", "visual_encoder",
                     "visual_projection"},
          "text": {"text", "txt", "text_model", "text_encoder", "language", "transformer", "token_embedding",
                   "positional_embedding", "ln_final", "text_projection"}}
ATTN_SCOPE = {"attn", "attention", "self_attn", "self_attention", "mha", "msa", "attn_layer"}
MLP_SCOPE = {"mlp", "ff", "ffn", "feed_forward", "feedforward", "mlp_block", "fc"}
ROLES = {
    "norm1": {"norm1", "ln_1", "ln1", "layernorm_before", "layer_norm1", "norm_1", "attn_norm", "input_layernorm",
              "attention_norm", "pre_attn_norm"},
    "norm2": {"norm2", "ln_2", "ln2", "layernorm_after", "layer_norm2", "norm_2", "mlp_norm", "ffn_norm",
              "post_attention_layernorm",
              "pre_mlp_norm"},
    "qkv": {"qkv", "in_proj", "in_proj_weight", "in_proj_bias", "to_qkv", "c_attn", "wqkv"},
    "q": {"q", "query", "q_proj", "to_q", "wq"},
    "k": {"k", "key", "k_proj", "to_k", "wk"},
    "v": {"v", "value", "v_proj", "to_v", "wv"},
    "attn_out": {"proj", "out_proj", "o_proj", "to_out", "wo", "out", "o", "dense"},
    "fc1": {"fc1", "c_fc", "w1", "lin1", "linear1", "up", "up_proj", "dense_h_to_4h"},
    "fc2": {"fc2", "c_proj", "w2", "lin2", "linear2", "down", "down_proj", "dense_4h_to_h"},
    "patch": {"patch_embed", "conv1", "patch_embedding", "to_patch_embedding", "patchify", "patch_proj",
              "embed", "stem"},
    "cls": {"cls_token", "class_embedding", "cls", "class_token", "cls_embedding"},
    "pos": {"pos_embed", "positional_embedding", "position_embedding", "pos_embedding", "pos",
            "position_embeddings"},
    "norm_pre": {"norm_pre", "ln_pre", "pre_norm", "pre_layernorm", "layernorm_pre", "pre_layrnorm"},
    "norm": {"norm", "ln_post", "ln_final", "final_norm", "norm_final", "layernorm", "final_layer_norm",
             "encoder_norm", "post_layernorm", "ln_f"},
    "head": {"head", "classifier", "proj", "projection", "text_projection", "visual_projection", "output"},
    "tokens": {"token_embedding", "tok_embeddings", "embed_tokens", "wte", "token_embed", "tok_emb"},
    "logit_scale": {"logit_scale", "temperature", "log_scale"},
}
BLOCK_ROLES = ("norm1", "norm2", "qkv", "q", "k", "v", "attn_out", "fc1", "fc2")
THIRDS = {"q": 0, "k": 1, "v": 2}


@dataclass(frozen=True)
class Slot:
    tower: str  # "visual", "text", "" (a single-tower model)
    block: int | None  # block index, or None outside the blocks
    role: str | None  # one of ROLES, None when the name says nothing known
    kind: str  # "weight", "bias" or "param"


def _tower(tokens: list[str]) -> str:
    if tokens[:1] == ["hf"]:  # a transformers model inside harness.models.hf's wrapper (TwoTowers, Backbone)
        tokens = tokens[1:]
    for t in tokens[:1]:
        for tower, names in TOWERS.items():
            if t in names:
                return tower
    return ""


def slot(name: str, towers: bool = True) -> Slot:
    """Where a parameter sits: its tower (when the model has two), its block index, its role and kind, read from
    its name."""
    tokens = name.split(".")
    kind = tokens[-1] if tokens[-1] in ("weight", "bias") else "param"
    if tokens[-1] in ("in_proj_weight", "in_proj_bias"):
        kind = tokens[-1].rpartition("_")[2]
    tower = _tower(tokens) if towers else ""
    block, after = None, tokens
    for i, t in enumerate(tokens[:-1]):
        if t.isdigit() and i > 0:
            block, after = int(t), tokens[i + 1:]
            break
    scope = "attn" if set(after) & ATTN_SCOPE else "mlp" if set(after) & MLP_SCOPE else ""
    role = None
    words = [t for t in after if not t.isdigit()] if block is not None else tokens
    for t in words:  # the outermost name that says something: patch_embed.proj is the patch embedding
        for r, names in ROLES.items():
            if t in names and ((block is None) != (r in BLOCK_ROLES)):
                role = r
                break
        if role:
            break
    if block is not None and role in ("fc2",) and scope == "attn":  # "c_proj" inside attention: its output
        role = "attn_out"
    if block is not None and role == "attn_out" and scope == "mlp":  # "proj"/"dense" inside an MLP: fc2
        role = "fc2"
    return Slot(tower, block, role, kind)


# ------------------------------------------------------------------------------------------------- mapping
@dataclass
class Mapping:
    """candidate key -> (library key, part): part is None (the whole tensor, reshaped when only the layout
    differs), "q" / "k" / "v" (a third of a fused qkv along dim 0), or "cat": the library key is then a tuple of the
    separate q, k and v tensors, concatenated along dim 0 into the candidate's fused qkv (transformers' layout)."""

    pairs: dict[str, tuple[str, str | None]]
    how: dict[str, str] = field(default_factory=dict)  # candidate key -> "name", "shape" or "given"

    def apply(self, library_state: dict[str, torch.Tensor], candidate_shapes: dict[str, torch.Size]) -> dict:
        out = {}
        for ck, (lk, part) in self.pairs.items():
            t = torch.cat([library_state[k] for k in lk]) if part == "cat" else library_state[lk]
            out[ck] = fit(t, None if part == "cat" else part, candidate_shapes[ck], ck, _name(lk))
        return out

    def table(self) -> str:
        width = max((len(k) for k in self.pairs), default=10)
        return "\n".join(f"  {ck:<{width}} <- {_name(lk)}{f'[{p}]' if p and p != 'cat' else ''}  "
                         f"({self.how.get(ck, 'given')})" for ck, (lk, p) in self.pairs.items())


def _name(lk: str | tuple) -> str:
    return " + ".join(lk) if isinstance(lk, tuple) else lk


def fit(t: torch.Tensor, part: str | None, shape: torch.Size, ck: str = "", lk: str = "") -> torch.Tensor:
    """The library tensor t (or its part: a third "q"/"k"/"v" of a fused qkv, or "T" its transpose: x @ P held as
    a Linear weight) in the candidate's shape; a Conv2d patch weight (D, C, P, P) fits a Linear (D, C·P·P) and back,
    and singleton dimensions may be added or dropped ([CLS]: (D,) <-> (1, 1, D))."""
    if part in THIRDS:
        t = t.chunk(3, dim=0)[THIRDS[part]]
    elif part == "T":
        t = t.T
    if t.shape == shape:
        return t
    same_numel = t.numel() == torch.Size(shape).numel()
    if same_numel and (t.shape[0] == shape[0] or [d for d in t.shape if d > 1] == [d for d in shape if d > 1]):
        return t.reshape(shape)
    raise MappingError(f"{ck}: shape {tuple(shape)} cannot hold library {lk}{f'[{part}]' if part else ''} of shape "
                       f"{tuple(t.shape)}")


def _fits(t_shape: torch.Size, part: str | None, shape: torch.Size) -> bool:
    try:
        fit(torch.empty(t_shape, device="meta"), part, torch.Size(shape))
        return True
    except MappingError:
        return False


def _kinds_meet(a: str, b: str) -> bool:
    """weight ~ weight, bias ~ bias, and a bare parameter (x @ P, a token) ~ either but a bias."""
    return a == b or ("param" in (a, b) and "bias" not in (a, b))


def _part(lib_shape: torch.Size, lib_kind: str, shape: torch.Size, kind: str,
          role_part: str | None) -> str | None | bool:
    """How a library tensor fits a candidate tensor: its third (q/k/v), its transpose ("T": a bare x @ P matrix
    held as a Linear weight, or back), as it is (None); False when it does not fit."""
    if role_part is not None:
        return role_part if _fits(lib_shape, role_part, shape) else False
    order = ["T", None] if len(lib_shape) == 2 and {lib_kind, kind} == {"param", "weight"} else [None]
    return next((p for p in order if _fits(lib_shape, p, shape)), False)


def propose_mapping(candidate: dict[str, torch.Tensor], library: dict[str, torch.Tensor],
                    strict: bool = True) -> Mapping:
    """A strict mapping proposed from names (after common renames) and shapes; MappingError where it cannot
    be decided or does not cover both sides (strict=False: what could be decided, for pairing stages)."""
    lib_towers = {_tower(k.split(".")) for k in library}
    towers = {"visual", "text"} <= lib_towers  # a CLIP: match within each tower
    lib_slots = {k: slot(k, towers) for k in library}
    pairs, how = {}, {}
    used: dict[str, set] = {}

    def free(lk: str, part) -> bool:
        return None not in used.get(lk, set()) and (part is not None or not used.get(lk)) and \
            part not in used.get(lk, set())

    def take(ck: str, lk: str, part, reason: str) -> None:
        pairs[ck], how[ck] = (lk, part), reason
        used.setdefault(lk, set()).add(part)

    pending = []
    for ck, ct in candidate.items():
        s = slot(ck, towers)
        found = []
        if s.role is not None:
            wanted = "qkv" if s.role in THIRDS else s.role
            for lk, ls in lib_slots.items():
                if (ls.tower, ls.block, ls.role) == (s.tower, s.block, wanted) and _kinds_meet(ls.kind, s.kind):
                    part = _part(library[lk].shape, ls.kind, ct.shape, s.kind, s.role if s.role in THIRDS else None)
                    if part is not False:
                        found.append((lk, part))
        if not found and s.role == "qkv":  # a fused qkv from separate q, k, v (transformers' layout)
            found = _thirds(ck, ct, s, lib_slots, library)
        if len(found) == 1 and (found[0][1] == "cat" or free(*found[0])):
            if found[0][1] == "cat":
                pairs[ck], how[ck] = found[0], "name (q, k, v concatenated)"
                for lk in found[0][0]:
                    used.setdefault(lk, set()).add(None)
            else:
                take(ck, *found[0], "name")
        else:
            pending.append(ck)
    # what the names leave open: the one unused library tensor of the same tower and block with a fitting shape
    ambiguous = []
    for ck in pending:
        s = slot(ck, towers)
        options = []
        for lk, ls in lib_slots.items():
            if (ls.tower, ls.block) == (s.tower, s.block) and _kinds_meet(ls.kind, s.kind) and lk not in used:
                part = _part(library[lk].shape, ls.kind, candidate[ck].shape, s.kind, None)
                if part is not False:
                    options.append((lk, part))
        if len(options) == 1:
            take(ck, *options[0], "shape")
        else:
            ambiguous.append(f"{ck} {tuple(candidate[ck].shape)}: "
                             + (", ".join(lk for lk, _ in options) if options else "none"))
    missing = [f"{k} {tuple(v.shape)}" for k, v in library.items() if used.get(k) not in ({None}, {"T"}, set(THIRDS))]
    if strict and (ambiguous or missing):
        problems = []
        if ambiguous:
            problems.append("candidate tensors with no single library counterpart (the options): "
                            + "; ".join(ambiguous))
        if missing:
            problems.append("library tensors not used exactly once: " + ", ".join(missing))
        raise MappingError("no strict mapping could be proposed: " + ". ".join(problems) + ". Pass mapping= (a dict "
                           "{candidate key: library key}, 'key[q]' for a third of a fused qkv, or a callable over "
                           "the library's state_dict)")
    return Mapping(pairs, how)


def _thirds(ck: str, ct: torch.Tensor, s: Slot, lib_slots: dict, library: dict) -> list:
    """[((q, k, v library keys), "cat")] when the library holds exactly one q, one k and one v of the candidate's
    tower, block and kind whose concatenation fits the candidate's fused tensor; [] otherwise."""
    keys = []
    for role in THIRDS:
        match = [lk for lk, ls in lib_slots.items()
                 if (ls.tower, ls.block, ls.role) == (s.tower, s.block, role) and _kinds_meet(ls.kind, s.kind)]
        if len(match) != 1:
            return []
        keys.append(match[0])
    joined = torch.Size([sum(library[k].shape[0] for k in keys), *library[keys[0]].shape[1:]])
    return [(tuple(keys), "cat")] if _fits(joined, None, ct.shape) else []


def _given_mapping(mapping: dict, candidate: dict, library: dict) -> Mapping:
    pairs, used = {}, {}
    for ck, lk in mapping.items():
        m = re.fullmatch(r"(.+)\[([qkvT])\]", lk)
        lk, part = (m.group(1), m.group(2)) if m else (lk, None)
        if ck not in candidate:
            raise MappingError(f"mapping names candidate key {ck!r}, which the candidate does not have")
        if lk not in library:
            raise MappingError(f"mapping names library key {lk!r}, which the library model does not have")
        if part is None and not _fits(library[lk].shape, None, candidate[ck].shape) and \
                _fits(library[lk].shape, "T", candidate[ck].shape):
            part = "T"
        fit(library[lk], part, candidate[ck].shape, ck, lk)  # the shape is checked here, with the reason
        pairs[ck] = (lk, part)
        used.setdefault(lk, []).append(part)
    _check_strict(pairs, used, candidate, library)
    return Mapping(pairs, {k: "given" for k in pairs})


def _check_strict(pairs: dict, used: dict, candidate: dict, library: dict) -> None:
    unmapped = [k for k in candidate if k not in pairs]
    unused = [k for k in library if k not in used]
    twice = [k for k, parts in used.items() if parts not in ([None], ["T"]) and sorted(parts) != ["k", "q", "v"]]
    if unmapped or unused or twice:
        raise MappingError("the mapping is not strict: " + "; ".join(
            f"{label}: {', '.join(keys)}" for label, keys in (("candidate tensors with no source", unmapped),
                                                              ("library tensors unused", unused),
                                                              ("library tensors used more than once or in part",
                                                               twice)) if keys))


def carry_weights(candidate: nn.Module, library: nn.Module, mapping=None, verbose: bool = True) -> Mapping | None:
    """Load the library's weights into the candidate (in place) through `mapping`; returns the Mapping used
    (None for a callable). Strict: every tensor on both sides used once, every shape checked."""
    lib_state = library.state_dict()
    cand_state = candidate.state_dict()
    if callable(mapping):
        new = mapping(lib_state)
        missing = sorted(set(cand_state) - set(new))
        extra = sorted(set(new) - set(cand_state))
        bad = [f"{k}: {tuple(new[k].shape)} vs {tuple(cand_state[k].shape)}" for k in new
               if k in cand_state and new[k].shape != cand_state[k].shape]
        if missing or extra or bad:
            raise MappingError(f"mapping callable: missing {missing}, unexpected {extra}, shape mismatches {bad}")
        candidate.load_state_dict(new, strict=True)
        return None
    m = _given_mapping(mapping, cand_state, lib_state) if mapping else propose_mapping(cand_state, lib_state)
    if verbose and mapping is None:
        print("harness.compare: proposed mapping (candidate <- library, matched by):\n" + m.table())
    candidate.load_state_dict(m.apply(lib_state, {k: v.shape for k, v in cand_state.items()}), strict=True)
    return m


# -------------------------------------------------------------------------------------------------- stages
def _param_sets(model: nn.Module, to_library=None) -> dict[str, frozenset]:
    """module path -> the library tensors its parameters (recursively) hold: {(library key, part)}, a fused qkv
    whose three parts are all held (or a transposed tensor) counting as the whole. Containers that are never
    called (ModuleList, ModuleDict) have no outputs to compare and are left out."""
    out = {}
    for path, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            continue
        keys = [f"{path}.{k}" if path else k for k, _ in module.named_parameters()]
        if not keys:
            continue
        parts: dict[str, set] = {}
        for k in keys:
            lk, part = to_library(k, (f"unmapped:{k}", None)) if to_library else (k, None)
            for one in (lk if part == "cat" else [lk]):  # a concatenation holds each of its tensors whole
                parts.setdefault(one, set()).add(None if part == "cat" else part)
        out[path] = frozenset((lk, None) if p in ({None}, {"T"}, set(THIRDS)) else (lk, x)
                              for lk, p in parts.items() for x in sorted(p, key=str))
    return out


def stage_pairs(candidate: nn.Module, library: nn.Module, mapping: Mapping | None) -> list[tuple[str, str]]:
    """(library module path, candidate module path) for every pair of modules that hold corresponding
    parameters; nested modules with the same parameters pair deepest with deepest."""
    lib_sets = {p: s for p, s in _param_sets(library).items() if p}
    cand_sets = {p: s for p, s in _param_sets(candidate, mapping.pairs.get if mapping else None).items() if p}
    by_set_cand: dict[frozenset, list[str]] = {}
    for p, s in cand_sets.items():
        by_set_cand.setdefault(s, []).append(p)
    by_set_lib: dict[frozenset, list[str]] = {}
    for p, s in lib_sets.items():
        by_set_lib.setdefault(s, []).append(p)
    pairs = []
    for s, lib_paths in by_set_lib.items():
        cands = sorted(by_set_cand.get(s, []), key=lambda p: -p.count("."))
        pairs += zip(sorted(lib_paths, key=lambda p: -p.count(".")), cands)
    return pairs


def stage_of(path: str) -> str:
    """The stage a module belongs to: within a block, the block's direct child (attn, mlp, norm1, ...)."""
    tokens = path.split(".")
    for i, t in enumerate(tokens[:-1]):
        if t.isdigit() and i > 0:
            return ".".join(tokens[: i + 2])
    return path


def _first_blocks(model: nn.Module) -> dict[str, str]:
    """tower prefix -> path of its first block (a module named ...<list>.0 holding an attention)."""
    out = {}
    for path, module in model.named_modules():
        parts = path.split(".")
        if parts and parts[-1] == "0" and isinstance(module, nn.Module) and any(
                n in ATTN_SCOPE for n, _ in module.named_children()):
            tower = _tower(parts)
            out.setdefault(tower, path)
    return out


def _align(c: torch.Tensor, l: torch.Tensor) -> torch.Tensor | None:
    """The candidate's output laid out as the library's, when only the layout differs."""
    if c.shape == l.shape:
        return c
    if c.ndim == 4 and l.ndim == 3 and c.shape[1] == l.shape[2] and c.shape[2] * c.shape[3] == l.shape[1]:
        return c.flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h·w, D)
    if c.ndim == 3 and l.ndim == 4 and l.shape[1] == c.shape[2] and l.shape[2] * l.shape[3] == c.shape[1]:
        return c.transpose(1, 2).reshape(l.shape)
    if c.numel() == l.numel() and [d for d in c.shape if d > 1] == [d for d in l.shape if d > 1]:
        return c.reshape(l.shape)
    return None


# ------------------------------------------------------------------------------------------------- running
def _is_clip(model: nn.Module) -> bool:
    return hasattr(model, "encode_image") and hasattr(model, "encode_text")


def _run(model: nn.Module, inputs: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    if "tokens" in inputs:
        return {"image_embedding": model.encode_image(inputs["images"].to(dtype)),
                "text_embedding": model.encode_text(inputs["tokens"])}
    return {"output": model(inputs["images"].to(dtype))}


def _capture(model: nn.Module, paths: list[str], pre: dict[str, str], inputs: dict,
             dtype) -> tuple[dict, dict, list]:
    """Outputs of the modules at `paths` (and inputs of the modules in `pre`: stage name -> path), and their firing
    order, in one forward pass. The two are kept apart: a candidate may have a module named like a stage."""
    got, order, hooks = {}, [], []
    modules = dict(model.named_modules())

    def keep(name):
        def hook(_m, _i, out):
            out = out[0] if isinstance(out, tuple) else out
            if isinstance(out, torch.Tensor) and name not in got:
                got[name] = out.detach().clone()
                order.append(name)
        return hook

    def keep_input(name):
        def hook(_m, args, kwargs=None):
            x = args[0] if args else next(iter((kwargs or {}).values()))
            if name not in got:
                got[name] = x.detach().clone()
                order.append(name)
        return hook

    try:
        for name, path in pre.items():
            hooks.append(modules[path].register_forward_pre_hook(keep_input("input:" + name)))
        for path in paths:
            hooks.append(modules[path].register_forward_hook(keep(path)))
        with torch.no_grad():
            outputs = _run(model, inputs, dtype)
    finally:
        for h in hooks:
            h.remove()
    inputs_of = {k.removeprefix("input:"): got.pop(k) for k in list(got) if k.startswith("input:")}
    return {**got, **outputs}, inputs_of, [k.removeprefix("input:") for k in order] + list(outputs)


@dataclass
class Report:
    df: pd.DataFrame
    first_divergence: dict | None  # the first stage past its tolerance in the forward pass
    mapping: Mapping | None
    summary: str
    first_backward_divergence: dict | None = None  # the first gradient stage past its tolerance, backward order

    @property
    def diverged(self) -> bool:
        """Any verdict failed, forward or backward (what the command line's exit status says)."""
        return self.first_divergence is not None or self.first_backward_divergence is not None

    def write(self, out: Path, name: str = "compare") -> list[Path]:
        from ..infra import results

        cols = ["check", "stage", "candidate_stage", "dtype", "backend", "max_abs", "rel_err", "tolerance", "rule",
                "result"]
        return results.write_table(self.df, Path(out), name, "Candidate vs library, stage by stage",
                                   [c for c in cols if c in self.df], self.summary)


def _default_inputs(library: nn.Module, seed: int = 0) -> dict:
    import timm.data

    from ..data.photos import image_batch
    from ..models.open_clip import transform

    if hasattr(library, "hf"):  # a transformers model in its harness.models.hf wrapper
        cfg = library.hf.config
        size = (getattr(cfg, "vision_config", None) or cfg).image_size
        tf = timm.data.create_transform(input_size=(3, size, size), crop_pct=1.0, interpolation="bicubic")
        images = image_batch(tf, size, ["astronaut", "chelsea"] if _is_clip(library) else ["astronaut"], 1, seed)
        if not _is_clip(library):
            return {"images": images}
        text = cfg.text_config
        if text.vocab_size != 49408:
            raise ValueError(f"compare's default captions are CLIP's BPE tokens; a text vocabulary of "
                             f"{text.vocab_size} needs inputs={{'images': ..., 'tokens': ...}}")
        import open_clip

        tokens = open_clip.get_tokenizer("ViT-B-32", context_length=text.max_position_embeddings)(
            ["a photo of an astronaut.", "a photo of a cat.", "noise."])
        return {"images": images, "tokens": tokens}
    if _is_clip(library):
        import open_clip

        size = library.visual.image_size[0]
        images = image_batch(transform(library), size, ["astronaut", "chelsea"], 1, seed)
        tokens = open_clip.get_tokenizer("ViT-B-32")(["a photo of an astronaut.", "a photo of a cat.", "noise."])
        return {"images": images, "tokens": tokens[:, : library.positional_embedding.shape[0]]}
    size = library.patch_embed.img_size[0] if hasattr(library, "patch_embed") else 224
    cfg = timm.data.resolve_data_config({"input_size": (3, size, size), "crop_pct": 1.0}, model=library)
    return {"images": image_batch(timm.data.create_transform(**cfg), size, ["astronaut"], 1, seed)}


def _library_model(library, kwargs: dict | None = None) -> nn.Module:
    """The library model: given as a module, or named as harness.models names it ("timm:NAME", "open_clip:ARCH",
    or a dict with kwargs and weights)."""
    if isinstance(library, nn.Module):
        return library
    from .. import models

    spec = library if isinstance(library, dict) else {"model": library}
    return models.resolve({**spec, "kwargs": {**spec.get("kwargs", {}), **(kwargs or {})}}).module


def compare(candidate: nn.Module, library, mapping=None, inputs: dict | None = None,
            dtypes=("float64", "float32"), backends=None, verbose: bool = True) -> Report:
    """Carry the library's weights into (a copy of) the candidate and compare the two stage by stage in each dtype
    and attention backend, then the gradients. See the module docstring."""
    library = _library_model(library).eval()
    master = library.double()
    cand_master = cast(candidate, torch.float64).eval()
    used = carry_weights(cand_master, master, mapping, verbose)
    inputs = inputs or _default_inputs(master)
    # a callable mapping says nothing about which tensor went where: stages are paired by a proposal, as far as
    # one can be made (the weights themselves came from the callable)
    pairing = used or propose_mapping(cand_master.state_dict(), master.state_dict(), strict=False)
    pairs = stage_pairs(cand_master, master, pairing)
    lib_first, cand_of = _first_blocks(master), dict(pairs)
    pre_lib = {f"{t + '.' if t else ''}embed": p for t, p in lib_first.items() if p in cand_of}
    pre_cand = {name: cand_of[p] for name, p in pre_lib.items()}
    rows = []
    truth = None
    with exact_float32():
        if any(d in LOW_PRECISION for d in dtypes):
            out, pre_out, _ = _capture(master, [lp for lp, _ in pairs], pre_lib, inputs, torch.float64)
            truth = {**out, **pre_out}
        for dtype in dtypes:
            dt = dtype_of(dtype)
            lib_d, cand_d = cast(master, dt), cast(cand_master, dt)
            for backend in backends or ["default"]:
                with backend_context(backend):
                    lib_out, lib_pre, order = _capture(lib_d, [lp for lp, _ in pairs], pre_lib, inputs, dt)
                    cand_out, cand_pre, _ = _capture(cand_d, [cp for _, cp in pairs], pre_cand, inputs, dt)
                lib_out = {**lib_out, **lib_pre}
                renamed = {**{lp: cand_out.get(cp) for lp, cp in pairs}, **cand_pre,
                           **{k: cand_out.get(k) for k in lib_out if k not in cand_of and k not in pre_lib}}
                for name in order:
                    c = renamed.get(name)
                    c = None if c is None else _align(c, lib_out[name])
                    base = {"check": "output" if name in ("output", "image_embedding", "text_embedding") else "stage",
                            "stage": name, "candidate_stage": cand_of.get(name, pre_cand.get(name, name)),
                            "dtype": dtype, "backend": backend}
                    if c is None:
                        rows.append({**base, "result": "not judged",
                                     "note": "not comparable: no candidate output of the library's layout"})
                        continue
                    low = dtype in LOW_PRECISION
                    if low and lib_out[name].numel() < MIN_ELEMENTS:
                        rows.append({**base, "result": "not judged",
                                     "note": f"too few elements: {lib_out[name].numel()}; a verdict against the "
                                             f"float64 truth needs {MIN_ELEMENTS}: pass more inputs"})
                        continue
                    r = verdict(dtype, c, lib_out[name], truth[name] if low else None)
                    rows.append({**base, **r, "result": "pass" if r["passed"] else "fail"})
        rows += _gradient_rows(cand_master, master, used, mapping, inputs, [d for d in dtypes if d in TOL])
    df = pd.DataFrame(rows)
    stages = df[df.check != "gradients"]
    failing = stages[stages.result == "fail"]
    first = None
    if len(failing):
        order = {s: i for i, s in enumerate(dict.fromkeys(stages.stage))}
        f = failing.assign(_o=failing.stage.map(order)).sort_values(["_o"], kind="stable").iloc[0]
        first = {k: f[k] for k in ("stage", "candidate_stage", "dtype", "backend", "rel_err", "tolerance")}
        # a module inside a block's attention or MLP (its qkv, its fc1) names the stage that holds it
        first.update(module=first["stage"], candidate_module=first["candidate_stage"],
                     stage=stage_of(first["stage"]), candidate_stage=stage_of(first["candidate_stage"]))
    backward = _first_backward(df)
    return Report(df, first, used, _summary(df, first, backward), backward)


def _first_backward(df: pd.DataFrame) -> dict | None:
    """The gradient stage the backward pass reaches first among those past their tolerance (the last failing one
    in forward order), in the first dtype that has one; the whole-model row when only it fails."""
    grads = df[df.check == "gradients"] if "check" in df else df.iloc[:0]
    for dtype in dict.fromkeys(grads.dtype):
        rows = grads[grads.dtype == dtype]
        per_stage = {r.stage: {"passed": r.result == "pass"} for r in rows.itertuples() if r.stage != "all parameters"}
        stage = first_backward(per_stage)
        if stage is None and (rows[rows.stage == "all parameters"].result == "fail").any():
            stage = "all parameters"
        if stage is not None:
            r = rows[rows.stage == stage].iloc[0]
            return {k: r[k] for k in ("stage", "dtype", "worst_param", "worst_param_rel_err", "rel_err", "tolerance")}
    return None


def _gradient_rows(cand_master, master, used, mapping, inputs, dtypes) -> list[dict]:
    """Gradients of Σ r·outputs (r fixed, random) for every candidate parameter, against the library's carried
    through the same mapping (slices and reshapes are linear: the mapping moves gradients as it moves weights).
    float64: relative error ≤ 1e-12 against the library; float32: each side's error against the library's float64
    gradients by the 2× rule (harness.methods.numerics), as the agreement suite judges them: over all parameters and
    stage by stage (the candidate's blocks, and the parameters before and after them:
    harness.methods.numerics.gradient_stages), each stage row naming its worst parameter."""
    g = torch.Generator().manual_seed(0)
    weights: dict[str, torch.Tensor] = {}

    def gradients(dt: torch.dtype) -> tuple[dict, dict]:
        grads = []
        for model in (cast(master, dt), cast(cand_master, dt)):
            model.zero_grad(set_to_none=True)
            outputs = _run(model, inputs, dt)
            loss = 0
            for k, v in outputs.items():
                weights.setdefault(k, torch.randn(v.shape, generator=g, dtype=torch.float64))
                loss = loss + (weights[k].to(v.device, v.dtype) * v).sum()
            loss.backward()
            grads.append({n: (p.grad if p.grad is not None else torch.zeros_like(p)).double()
                          for n, p in model.named_parameters()})
        lib_g, cand_g = grads
        moved = mapping(lib_g) if callable(mapping) else used.apply(lib_g, {k: v.shape for k, v in cand_g.items()})
        return cand_g, moved

    truth = gradients(torch.float64)[1]
    rows = []
    for dtype in dtypes:
        cand, lib = gradients(dtype_of(dtype))
        cand = {k: cand[k] for k in truth}
        whole, per_stage, per_param, members = gradient_verdicts(
            dtype, cand, lib, truth if dtype != "float64" else None, tower=lambda name: _tower(name.split(".")))
        first = first_backward(per_stage)
        stage_rows = []
        for stage, r in per_stage.items():
            worst = max(members[stage], key=per_param.get)
            stage_rows.append({"check": "gradients", "stage": stage, "dtype": dtype, "backend": "default", **r,
                               "result": "pass" if r["passed"] else "fail", "worst_param": worst,
                               "worst_param_rel_err": per_param[worst]})
        worst = max(per_param, key=per_param.get)
        rows.append({"check": "gradients", "stage": "all parameters", "dtype": dtype, "backend": "default", **whole,
                     "result": "pass" if whole["passed"] else "fail", "worst_param": worst,
                     "worst_param_rel_err": per_param[worst],
                     "stages_failing": sum(not r["passed"] for r in per_stage.values()),
                     "first_failing_stage": first or "none"})
        rows += stage_rows
    return rows


def _summary(df: pd.DataFrame, first: dict | None, backward: dict | None = None) -> str:
    stages = df[df.check != "gradients"]
    n_pass = int((stages.result == "pass").sum())
    text = [f"{n_pass} of {len(stages)} stage comparisons pass ({', '.join(dict.fromkeys(stages.dtype))}; backends "
            f"{', '.join(dict.fromkeys(stages.backend))})."]
    if first is None:
        text.append("No stage departs from the library beyond its tolerance.")
    else:
        before = stages[(stages.dtype == first["dtype"]) & (stages.backend == first["backend"])]
        names = list(dict.fromkeys(before.stage))
        agreed = before[before.stage.isin(names[: names.index(first["module"])])]
        worst_before = agreed["rel_err"].max() if len(agreed) else float("nan")
        within = f", first in its module `{first['module']}`" if first["module"] != first["stage"] else ""
        text.append(f"First divergence: library stage `{first['stage']}` (candidate "
                    f"`{first['candidate_stage']}`{within}) in {first['dtype']}, backend {first['backend']}: "
                    f"relative error {first['rel_err']:.3g} > tolerance {first['tolerance']:.3g}; the "
                    f"{len(names[: names.index(first['module'])])} comparisons before it agree "
                    f"(worst {worst_before:.2g}).")
    for _, g in df[(df.check == "gradients") & (df.stage == "all parameters")].iterrows():
        text.append(f"Gradients {g['dtype']}: {g['result']} (relative error {g['rel_err']:.3g}; worst parameter "
                    f"{g['worst_param']} {g['worst_param_rel_err']:.3g}; {g['stages_failing']} stage(s) failing).")
    if backward is None:
        text.append("No gradient stage departs from the library beyond its tolerance.")
    else:
        text.append(f"First backward divergence: stage `{backward['stage']}` in {backward['dtype']} (parameter "
                    f"`{backward['worst_param']}`, relative error {backward['worst_param_rel_err']:.3g}): the "
                    f"stage's gradients are {backward['rel_err']:.3g} off > tolerance {backward['tolerance']:.3g}; "
                    "the stages after it (reached first by the backward pass) agree.")
    return "\n".join(text)


# ---------------------------------------------------------------------------------------------------- CLI
def _load_object(spec: str):
    import importlib

    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"{spec!r}: expected pkg.module:name")
    return getattr(importlib.import_module(module), attr)


def _candidate(name: str, library: nn.Module) -> nn.Module:
    """The candidate named as harness.models names models: "python:MODULE:FACTORY" (the factory called with the
    library model when it takes an argument, else with none), or any other registry name."""
    import inspect

    from .. import models
    from ..models.python import factory

    spec = models.parse(name)
    if spec.library != "python":
        return models.resolve(spec).module
    build = factory(spec)
    return build(library) if inspect.signature(build).parameters else build(**spec.kwargs)


def main(argv: list[str] | None = None) -> int:
    import json

    from .args import Parser

    p = Parser(prog="python -m harness compare", description=__doc__.splitlines()[0])
    p.add_argument("--candidate", required=True, help="python:MODULE:FACTORY returning your nn.Module (called with no "
                                                      "argument, or with the library model if it takes one)")
    p.add_argument("--library", required=True, help="a harness.models name: timm:NAME or open_clip:ARCH (random "
                                                    "weights), open_clip:ARCH/PRETRAINED, hf:ID_OR_FOLDER")
    p.add_argument("--library-kwargs", default="{}", help="JSON keyword arguments for the library's create function")
    p.add_argument("--mapping", help="pkg.module:name of a dict or a callable (default: proposed)")
    p.add_argument("--dtype", action="append", dest="dtypes", help="float64, float32, bfloat16, float16 (repeatable)")
    p.add_argument("--backend", action="append", dest="backends",
                   help="SDPA backend to pin (math, flash_attention, ...; default: torch's choice)")
    p.add_argument("--out", type=Path, help="folder for compare.csv and compare.md")
    p.add_argument("--allow-failures", action="store_true",
                   help="exit 0 even when a stage or a gradient departs (by default: exit 1)")
    args = p.parse_args(argv)
    from ..infra.suite import ConfigError
    from ..methods.numerics import BACKENDS, DTYPES

    try:
        kwargs = json.loads(args.library_kwargs)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--library-kwargs {args.library_kwargs!r}: not JSON ({e.msg} at character {e.pos}); "
                          "give an object such as '{\"img_size\": 64}'") from None
    if not isinstance(kwargs, dict):
        raise ConfigError(f"--library-kwargs {args.library_kwargs!r}: a JSON object of keyword arguments")
    for dtype in args.dtypes or ():
        if dtype not in DTYPES:
            raise ConfigError(f"--dtype {dtype}: unknown dtype; choose from {', '.join(DTYPES)}")
    for backend in args.backends or ():
        if backend not in BACKENDS:
            raise ConfigError(f"--backend {backend}: unknown SDPA backend; choose from {', '.join(BACKENDS)}")
    from .. import models

    models.check(args.library)
    models.check(args.candidate)
    library = _library_model(args.library, kwargs)
    candidate = _candidate(args.candidate, library)
    try:
        mapping = _load_object(args.mapping) if args.mapping else None
    except (ValueError, ImportError, AttributeError) as e:
        raise ConfigError(f"--mapping {args.mapping!r}: {e} (expected pkg.module:name of a dict or a "
                          "callable)") from None
    report = compare(candidate, library, mapping, dtypes=tuple(args.dtypes or ("float64", "float32")),
                     backends=args.backends)
    print(report.summary)
    if args.out:
        print("->", ", ".join(str(x) for x in report.write(args.out)))
    return 1 if report.diverged and not args.allow_failures else 0
