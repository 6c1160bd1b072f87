"""open_clip CLIP (ViT towers) -> reference CLIP: read the config off the model, map the state_dict.

Strict like the timm converter: every source tensor is used exactly once, every shape is checked, and a
tower the reference lacks (ResNet, timm/ConvNeXt, Hugging Face text, SigLIP's bias, attention pooling, ...)
is refused with an error that names it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..reference.clip import CLIP, CLIPConfig, CLIPTextConfig, clip_vision_config
from .common import ConversionError, UnsupportedModelError, materialize

# Derived buffers that some checkpoints carry and the reference recomputes (the text tower's causal mask).
IGNORED = {"attn_mask"}

# open_clip key fragments -> reference key fragments, applied in order.
_BLOCK_RENAMES = [
    (".ln_1.", ".norm1."), (".ln_2.", ".norm2."),
    (".attn.in_proj_weight", ".attn.qkv.weight"), (".attn.in_proj_bias", ".attn.qkv.bias"),
    (".attn.out_proj.", ".attn.proj."), (".mlp.c_fc.", ".mlp.fc1."), (".mlp.c_proj.", ".mlp.fc2."),
]
_RENAMES = [
    ("visual.conv1.weight", "visual.patch_embed.proj.weight", lambda w: w.reshape(w.shape[0], -1)),
    ("visual.class_embedding", "visual.cls_token", lambda t: t.reshape(1, 1, -1)),
    ("visual.positional_embedding", "visual.pos_embed", lambda t: t.unsqueeze(0)),
    ("visual.ln_pre.", "visual.norm_pre.", None),
    ("visual.ln_post.", "visual.norm.", None),
    ("visual.proj", "visual.head.weight", lambda p: p.T),  # x @ proj  ==  Linear with weight projᵀ
    ("visual.transformer.resblocks.", "visual.blocks.", None),
    ("token_embedding.", "text.token_embedding.", None),
    ("positional_embedding", "text.positional_embedding", None),
    ("transformer.resblocks.", "text.blocks.", None),
    ("ln_final.", "text.ln_final.", None),
    ("text_projection", "text.text_projection", None),
    ("logit_scale", "logit_scale", lambda t: t.reshape(())),
]


def _target(key: str):
    """(reference key, transform) for one open_clip key, or (None, None) when no rule matches."""
    for src, dst, fn in _RENAMES:
        if key == src or (src.endswith(".") and key.startswith(src)):
            new = dst + key[len(src):]
            for a, b in _BLOCK_RENAMES:
                new = new.replace(a, b)
            return new, fn
    return None, None


def convert_state_dict(state_dict: dict[str, torch.Tensor], config: CLIPConfig) -> dict[str, torch.Tensor]:
    """Map an open_clip CLIP state_dict onto the reference CLIP's keys (a pure function, strict)."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in CLIP(config).state_dict().items()}
    out, extra, bad_shape, bad_targets = {}, [], [], set()
    for key, value in state_dict.items():
        if key in IGNORED:
            continue
        new, fn = _target(key)
        if new is None or new not in expected or new in out:
            extra.append(key)
            continue
        value = fn(value) if fn else value
        if value.shape != expected[new]:
            bad_shape.append(f"{key} -> {new}: source {tuple(value.shape)} vs reference {tuple(expected[new])}")
            bad_targets.add(new)
            continue
        out[new] = value
    missing = [k for k in expected if k not in out and k not in bad_targets]
    if extra or missing or bad_shape:
        parts = [f"{label}: {', '.join(keys)}" for label, keys in
                 (("missing keys", missing), ("unexpected keys", extra), ("shape mismatches", bad_shape)) if keys]
        raise ConversionError("checkpoint does not match the reference CLIP: " + "; ".join(parts))
    return out


def _blocks_info(resblocks: nn.Module, where: str, problems: list[str]) -> tuple[set, set, set]:
    acts, eps, heads = set(), set(), set()
    for i, blk in enumerate(resblocks):
        if type(blk).__name__ != "ResidualAttentionBlock":
            problems.append(f"{where}.{i} is {type(blk).__name__} (QK-norm, scaled cosine attention or other custom "
                            "block; the reference has the standard residual attention block)")
            continue
        if not (isinstance(blk.ls_1, nn.Identity) and isinstance(blk.ls_2, nn.Identity)):
            problems.append("LayerScale (ls_init_value)")
        if hasattr(blk, "ln_1_kv"):
            problems.append("cross-attention blocks")
        act = type(blk.mlp.gelu).__name__
        if act == "GELU" and getattr(blk.mlp.gelu, "approximate", "none") == "none":
            acts.add("gelu")
        elif act == "QuickGELU":
            acts.add("quick_gelu")
        else:
            problems.append(f"activation {act}")
        for ln in (blk.ln_1, blk.ln_2):
            if not isinstance(ln, nn.LayerNorm):
                problems.append(f"{where} norm {type(ln).__name__}")
            eps.add(ln.eps)
        heads.add(blk.attn.num_heads)
    return acts, eps, heads


def config_from_open_clip(model: nn.Module) -> CLIPConfig:
    """The CLIPConfig equal to an open_clip CLIP with ViT towers, or UnsupportedModelError naming what differs."""
    cls = type(model).__name__
    if cls != "CLIP":
        hint = {"CustomTextCLIP": " (a custom or Hugging Face text tower)", "CoCa": " (captioning decoder)"}
        raise UnsupportedModelError(f"open_clip {cls}{hint.get(cls, '')} is not supported: "
                                    "the reference implements CLIP with a ViT image tower and the CLIP text tower")
    problems: list[str] = []
    v = model.visual
    if type(v).__name__ != "VisionTransformer":
        name = {"ModifiedResNet": "ResNet", "TimmModel": "timm (ConvNeXt, ...)"}.get(type(v).__name__, type(v).__name__)
        raise UnsupportedModelError(f"open_clip image tower {type(v).__name__} ({name}) is not supported: "
                                    "the reference has a ViT image tower only")
    if getattr(model, "logit_bias", None) is not None:
        problems.append("a logit bias (SigLIP's sigmoid loss)")
    if v.attn_pool is not None:
        problems.append("attentional pooling in the image tower")
    if v.pool_type not in ("tok", "avg"):
        problems.append(f"image pool_type={v.pool_type!r}")
    if v.final_ln_after_pool:
        problems.append("final LayerNorm after pooling (final_ln_after_pool=True)")
    if v.proj is None:
        problems.append("an image tower without projection")
    if model.text_pool_type != "argmax":
        problems.append(f"text pooling {model.text_pool_type!r} (the reference reads the end-of-text token by argmax)")
    if model.attn_mask is None:
        problems.append("a bidirectional text tower (no causal mask)")
    if not isinstance(model.text_projection, nn.Parameter):
        problems.append(f"text projection {type(model.text_projection).__name__} (the reference has a matrix)")
    v_acts, v_eps, v_heads = _blocks_info(v.transformer.resblocks, "visual.transformer.resblocks", problems)
    t_acts, t_eps, t_heads = _blocks_info(model.transformer.resblocks, "transformer.resblocks", problems)
    eps = v_eps | t_eps | {v.ln_post.eps, model.ln_final.eps} | (set() if isinstance(v.ln_pre, nn.Identity)
                                                               else {v.ln_pre.eps})
    if len(eps) > 1:
        problems.append(f"several LayerNorm epsilons {sorted(eps)}")
    if len(v_acts | t_acts) > 1 or len(v_heads) > 1 or len(t_heads) > 1:
        problems.append("blocks that differ in activation or heads")
    if problems:
        raise UnsupportedModelError("open_clip model uses features the reference CLIP lacks: "
                                    + "; ".join(dict.fromkeys(problems)))

    act, norm_eps = (v_acts | t_acts).pop(), eps.pop()
    embed_dim = v.proj.shape[1]
    image_size, patch_size = v.image_size[0], v.patch_size[0]
    if v.image_size[0] != v.image_size[1] or v.patch_size[0] != v.patch_size[1]:
        raise UnsupportedModelError(f"non-square images or patches ({v.image_size}, {v.patch_size})")
    vision = clip_vision_config(
        image_size=image_size, patch_size=patch_size, num_classes=embed_dim, width=v.conv1.out_channels,
        depth=len(v.transformer.resblocks), mlp_dim=v.transformer.resblocks[0].mlp.c_fc.out_features,
        heads=v_heads.pop(), pool="token" if v.pool_type == "tok" else "avg",
        pre_norm=not isinstance(v.ln_pre, nn.Identity), act=act, norm_eps=norm_eps)
    blk = model.transformer.resblocks[0]
    text = CLIPTextConfig(
        context_length=model.positional_embedding.shape[0], vocab_size=model.token_embedding.num_embeddings,
        width=model.token_embedding.embedding_dim, depth=len(model.transformer.resblocks), heads=t_heads.pop(),
        mlp_dim=blk.mlp.c_fc.out_features, act=act, norm_eps=norm_eps)
    return CLIPConfig(embed_dim=embed_dim, vision=vision, text=text)


def from_open_clip(model: nn.Module, copy: bool = True) -> CLIP:
    """A reference CLIP carrying an open_clip CLIP's weights, on its device and dtype, in eval mode (copy=False:
    sharing the library's memory where it can, see harness.convert.common.materialize)."""
    config = config_from_open_clip(model)
    return materialize(CLIP, config, convert_state_dict(model.state_dict(), config), copy)




def to_open_clip(reference: CLIP) -> nn.Module:
    """The other direction: an open_clip CLIP built from the reference's config, carrying its weights.

    Used to compare models trained with the reference (the zero-shot suite's default) against open_clip.
    Every tensor goes through the inverse of the rules above; the result is converted back with
    `from_open_clip`'s strict mapping and must give back exactly the reference's tensors.
    """
    import open_clip.model as ocm

    c = reference.config
    v, t = c.vision, c.text
    if v.act != t.act or v.pool != "token" or not v.pre_norm or v.patch_bias or v.head_bias or v.in_chans != 3:
        raise UnsupportedModelError("only reference CLIPs with open_clip's layout convert to open_clip: one "
                                    "activation for both towers, token pooling, ln_pre, no patch or head bias, "
                                    "3 input channels")
    vision_cfg = ocm.CLIPVisionCfg(layers=v.depth, width=v.width, head_width=v.width // v.heads,
                                   mlp_ratio=v.mlp_dim / v.width, patch_size=v.patch_size, image_size=v.image_size,
                                   norm_kwargs={"eps": v.norm_eps})
    text_cfg = ocm.CLIPTextCfg(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width,
                               heads=t.heads, layers=t.depth, mlp_ratio=t.mlp_dim / t.width,
                               norm_kwargs={"eps": t.norm_eps})
    param = next(reference.parameters())
    with torch.random.fork_rng():  # open_clip's initialisation is overwritten; leave the caller's RNG alone
        model = ocm.CLIP(c.embed_dim, vision_cfg, text_cfg, quick_gelu=v.act == "quick_gelu")
    if config_from_open_clip(model) != c:
        raise ConversionError(f"open_clip built {config_from_open_clip(model)} for the reference config {c}")
    ref_sd = reference.state_dict()
    state = {}
    for key, target in model.state_dict().items():
        if key in IGNORED:
            continue
        new, _ = _target(key)
        value = ref_sd[new]
        state[key] = (value.T if key == "visual.proj" else value).reshape(target.shape).clone()
    back = convert_state_dict(state, c)
    if back.keys() != ref_sd.keys() or any(not torch.equal(back[k], ref_sd[k]) for k in back):
        raise ConversionError("the reference -> open_clip mapping does not round-trip")
    model.load_state_dict(state)
    return model.to(param.device, param.dtype).eval()
