"""timm VisionTransformer -> reference ViT: read the config off the model, map the state_dict.

The mapping is strict: every source tensor is used exactly once, every shape is checked, and a
timm feature the reference does not implement is refused with an error that names it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..reference.hybrid import StemConfig
from ..reference.vit import ViT, ViTConfig
from .common import ConversionError, UnsupportedModelError, materialize


def _layernorm_eps(module: nn.Module, where: str, problems: list[str]) -> float | None:
    if isinstance(module, nn.Identity):
        return None
    if type(module).__name__ != "LayerNorm" or not isinstance(module, nn.LayerNorm):
        problems.append(f"{where} is {type(module).__name__}, the reference has LayerNorm only")
        return None
    if not module.elementwise_affine or module.bias is None:
        problems.append(f"{where} is a LayerNorm without affine weight and bias")
    return module.eps


def _activation(module: nn.Module) -> str | None:
    name = type(module).__name__
    if name == "GELU" and getattr(module, "approximate", "none") == "none":
        return "gelu"
    if name == "QuickGELU":
        return "quick_gelu"
    return None


def config_from_timm(model: nn.Module) -> ViTConfig:
    """The ViTConfig equal to a timm VisionTransformer, or UnsupportedModelError naming every feature it lacks."""
    cls = type(model).__name__
    if cls != "VisionTransformer":
        hint = {"Eva": " (RoPE, SwiGLU)", "VisionTransformerDistilled": " (distillation token)"}.get(cls, "")
        raise UnsupportedModelError(
            f"timm {cls}{hint} is not supported: the reference implements VisionTransformer only")

    problems: list[str] = []
    if model.num_reg_tokens:
        problems.append(f"register tokens ({model.num_reg_tokens})")
    if model.no_embed_class:
        problems.append("position embedding without the class token (no_embed_class=True)")
    if model.dynamic_img_size:
        problems.append("dynamic image size (dynamic_img_size=True)")
    if model.pos_embed is None:
        problems.append("no position embedding (pos_embed='none')")
    if model.attn_pool is not None or model.global_pool not in ("token", "avg"):
        problems.append(f"global_pool={model.global_pool!r} (the reference has 'token' and 'avg')")
    if getattr(model, "pool_include_prefix", False):
        problems.append("pooling that includes prefix tokens (pool_include_prefix=True)")
    pe = model.patch_embed
    hybrid = type(pe).__name__ == "HybridEmbed"
    stem = _stem_config(pe.backbone, problems) if hybrid else None
    if hybrid and not isinstance(pe.proj, nn.Conv2d):
        problems.append("a hybrid patch embedding without projection (proj=False)")
    if not hybrid and (type(pe).__name__ != "PatchEmbed" or not isinstance(pe.norm, nn.Identity)):
        problems.append(f"patch embedding {type(pe).__name__} (the reference has the linear patch projection and "
                        "the hybrid's ResNet stem; embed_layer / embed_norm_layer)")
    if getattr(pe, "dynamic_img_pad", False):
        problems.append("dynamic image padding (dynamic_img_pad=True)")
    if not getattr(pe, "flatten", True):
        problems.append("patch embedding without flatten")
    if pe.patch_size[0] != pe.patch_size[1] or pe.img_size[0] != pe.img_size[1]:
        problems.append(f"non-square patches or images ({pe.patch_size}, {pe.img_size})")

    eps = {_layernorm_eps(model.norm_pre, "norm_pre", problems), _layernorm_eps(model.norm, "norm", problems),
           _layernorm_eps(model.fc_norm, "fc_norm", problems)}
    acts, qkv_bias = set(), set()
    for i, blk in enumerate(model.blocks):
        where = f"blocks.{i}"
        if type(blk).__name__ != "Block":
            problems.append(f"{where} is {type(blk).__name__} (the reference has the pre-norm Block)")
            continue
        eps |= {_layernorm_eps(blk.norm1, f"{where}.norm1", problems),
                _layernorm_eps(blk.norm2, f"{where}.norm2", problems)}
        if not (isinstance(blk.ls1, nn.Identity) and isinstance(blk.ls2, nn.Identity)):
            problems.append("LayerScale (init_values)")
        attn, mlp = blk.attn, blk.mlp
        if type(attn).__name__ != "Attention":
            problems.append(f"{where}.attn is {type(attn).__name__} (RoPE, differential or other attention)")
            continue
        if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
            problems.append("QK normalisation (qk_norm=True)")
        if not isinstance(attn.norm, nn.Identity):
            problems.append("attention output norm (scale_attn_norm=True)")
        if getattr(attn, "gate", None) is not None:
            problems.append("gated attention (gated=True)")
        if attn.attn_dim != attn.qkv.in_features or attn.proj.bias is None:
            problems.append("attention with a head dimension other than dim/heads, or no projection bias")
        qkv_bias.add(attn.qkv.bias is not None)
        if type(mlp).__name__ != "Mlp" or not isinstance(mlp.norm, nn.Identity) or mlp.fc1.bias is None:
            problems.append(
                f"{where}.mlp is {type(mlp).__name__} (SwiGLU, MLP norm or no bias; the reference has fc1-act-fc2)")
            continue
        act = _activation(mlp.act)
        if act is None:
            problems.append(f"activation {type(mlp.act).__name__} (the reference has exact GELU and QuickGELU)")
        acts.add(act)
    eps.discard(None)
    if len(eps) > 1:
        problems.append(f"several LayerNorm epsilons {sorted(eps)}")
    if problems:
        unique = list(dict.fromkeys(problems))
        raise UnsupportedModelError("timm model uses features the reference ViT lacks: " + "; ".join(unique))

    blk = model.blocks[0]
    return ViTConfig(
        image_size=pe.img_size[0],
        patch_size=pe.patch_size[0],
        in_chans=pe.in_chans if hybrid else pe.proj.in_channels,
        num_classes=model.num_classes,
        width=model.embed_dim,
        depth=len(model.blocks),
        mlp_dim=blk.mlp.fc1.out_features,
        heads=blk.attn.num_heads,
        qkv_bias=qkv_bias.pop(),
        class_token=model.cls_token is not None,
        pool=model.global_pool,
        fc_norm=not isinstance(model.fc_norm, nn.Identity),
        pos_embed="learn",
        pre_norm=not isinstance(model.norm_pre, nn.Identity),
        patch_bias=pe.proj.bias is not None,
        head_bias=not isinstance(model.head, nn.Linear) or model.head.bias is not None,
        act=acts.pop(),
        norm_eps=eps.pop() if eps else 1e-6,
        stem=stem,
    )


def _stem_config(backbone: nn.Module, problems: list[str]) -> StemConfig | None:
    """The StemConfig of a timm hybrid's backbone: timm's ResNetV2 without pre-activation (ViT hybrids), or its bare
    stem (nn.Sequential conv, norm, pool); anything else is named in `problems`."""
    name = type(backbone).__name__
    if name == "ResNetV2":
        stem, stages = backbone.stem, list(backbone.stages)
        if not isinstance(backbone.norm, nn.Identity) or any(p.numel() for p in backbone.head.parameters()):
            problems.append("a ResNetV2 backbone with pre-activation or a head (the reference hybrid has ViT's "
                            "non-pre-activation ResNet-v2)")
    elif name == "Sequential":
        stem, stages = backbone, []
    else:
        problems.append(f"a {name} backbone (the reference hybrid has timm's ResNetV2 stem with weight-standardised "
                        "convolutions and GroupNorm: vit_*_r*_s*, vit_tiny_r_s16_p8; not ResNet-D with BatchNorm)")
        return None
    if [n for n, _ in stem.named_children()] != ["conv", "norm", "pool"]:
        problems.append(f"a stem of {[n for n, _ in stem.named_children()]} (the reference: conv 7×7, norm, pool)")
        return None
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in backbone.modules() if isinstance(m, nn.GroupNorm)]
    conv_types = {type(m).__name__ for m in convs}
    if not conv_types <= {"StdConv2dSame", "StdConv2d"} or len(conv_types) != 1:
        problems.append(f"backbone convolutions {sorted(conv_types)} (the reference: weight-standardised, one kind)")
    if len(norms) != sum(1 for m in backbone.modules() if "Norm" in type(m).__name__) or not norms:
        problems.append("backbone norms other than GroupNorm")
    blocks = [b for s in stages for b in s.blocks]
    if any(type(b).__name__ != "Bottleneck" for b in blocks):
        problems.append("backbone blocks other than the non-pre-activation Bottleneck")
    if any(b.conv2.groups != 1 or b.conv2.dilation != (1, 1) or b.conv2.out_channels * 4 != b.conv3.out_channels
           for b in blocks if type(b).__name__ == "Bottleneck"):
        problems.append("grouped, dilated or other-ratio bottlenecks")
    if len({(m.num_groups, m.eps) for m in norms}) > 1 or len({m.eps for m in convs}) > 1:
        problems.append("several GroupNorm group counts or epsilons in the backbone")
    if problems:
        return None
    return StemConfig(layers=tuple(len(s.blocks) for s in stages), width=stem.conv.out_channels,
                      channels=tuple(s.blocks[0].conv3.out_channels for s in stages) or (256, 512, 1024, 2048),
                      groups=norms[0].num_groups, norm_eps=norms[0].eps, ws_eps=convs[0].eps,
                      same_padding=type(convs[0]).__name__ == "StdConv2dSame")


# Source tensors whose layout differs from the reference: name -> function(tensor, config).
# The patch projection is a Conv2d (D, C, P, P) in timm and a Linear over (C, P, P)-flattened patches here.
_RESHAPED = {"patch_embed.proj.weight": lambda w: w.reshape(w.shape[0], -1)}


def convert_state_dict(state_dict: dict[str, torch.Tensor], config: ViTConfig) -> dict[str, torch.Tensor]:
    """Map a timm VisionTransformer state_dict onto the reference ViT's keys (a pure function).

    Raises ConversionError naming every missing key, extra key and shape mismatch.
    """
    with torch.device("meta"):
        expected = {k: v.shape for k, v in ViT(config).state_dict().items()}
    out, extra, bad_shape = {}, [], []
    for key, value in state_dict.items():
        if config.stem is not None and not config.stem.layers and key.startswith("patch_embed.backbone.") \
                and not key.startswith("patch_embed.backbone.stem."):  # timm's bare stem is the backbone itself
            key = key.replace("patch_embed.backbone.", "patch_embed.backbone.stem.", 1)
        if key not in expected:
            extra.append(key)
            continue
        value = _RESHAPED[key](value) if key in _RESHAPED else value
        if value.shape != expected[key]:
            bad_shape.append(f"{key}: source {tuple(value.shape)} vs reference {tuple(expected[key])}")
            continue
        out[key] = value
    missing = [k for k in expected if k not in out and not any(b.startswith(f"{k}:") for b in bad_shape)]
    if extra or missing or bad_shape:
        parts = [f"{label}: {', '.join(keys)}" for label, keys in
                 (("missing keys", missing), ("unexpected keys", extra), ("shape mismatches", bad_shape)) if keys]
        raise ConversionError("checkpoint does not match the reference ViT: " + "; ".join(parts))
    return out


def from_timm(model: nn.Module, copy: bool = True) -> ViT:
    """A reference ViT carrying a timm VisionTransformer's weights, on its device and dtype, in eval mode
    (copy=False: sharing the library's memory where it can, see materialize)."""
    config = config_from_timm(model)
    return materialize(ViT, config, convert_state_dict(model.state_dict(), config), copy)
