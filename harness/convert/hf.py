"""Hugging Face transformers CLIPModel -> reference CLIP, ViTModel -> reference ViT (transformers 5's layouts).

Strict like the timm and open_clip converters: every source tensor is used exactly once (q_proj, k_proj and v_proj
become the one qkv projection), every shape is checked, and what the reference lacks is refused by name:
SigLIP's attention-pool head and logit bias, Dinov2's LayerScale and register tokens, ViTModel's tanh pooler,
a text tower whose end-of-text token is not the highest id (the reference reads it by argmax), activations other
than GELU and QuickGELU.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..reference.clip import CLIP, CLIPConfig, CLIPTextConfig, clip_vision_config
from ..reference.vit import ViT, ViTConfig
from .common import ConversionError, UnsupportedModelError, materialize

ACTS = {"gelu": "gelu", "quick_gelu": "quick_gelu"}  # transformers' hidden_act -> the reference's act
# transformers keys that are buffers the reference recomputes (position ids)
IGNORED_SUFFIXES = ("position_ids",)


def _act(cfg, where: str, problems: list[str]) -> str | None:
    act = ACTS.get(cfg.hidden_act)
    if act is None:
        problems.append(f"{where} activation {cfg.hidden_act!r} (the reference has gelu and quick_gelu)")
    return act


def _attn_heads(cfg, where: str, problems: list[str]) -> int:
    if cfg.hidden_size % cfg.num_attention_heads:
        problems.append(f"{where} width {cfg.hidden_size} not divisible by {cfg.num_attention_heads} heads")
    return cfg.num_attention_heads


def _refuse(what: str, problems: list[str]) -> None:
    if problems:
        raise UnsupportedModelError(f"{what} uses features the reference lacks: " + "; ".join(dict.fromkeys(problems)))


def config_from_hf(model: nn.Module) -> CLIPConfig | ViTConfig:
    """The reference config equal to a transformers CLIPModel or ViTModel, or UnsupportedModelError naming what
    differs (any other class is refused by name)."""
    cls = type(model).__name__
    if cls == "CLIPModel":
        return _clip_config(model)
    if cls in ("ViTModel", "ViTForImageClassification"):
        return _vit_config(model)
    hint = {"SiglipModel": "SigLIP's attention-pool (MAP) image head and logit bias",
            "Siglip2Model": "SigLIP 2's NaFlex patches, attention-pool head and logit bias",
            "Dinov2Model": "Dinov2's LayerScale, and its register tokens where it has them",
            "Dinov2WithRegistersModel": "register tokens and LayerScale",
            "DeiTModel": "DeiT's distillation token"}.get(cls)
    raise UnsupportedModelError(f"transformers {cls} is not supported" + (f" ({hint})" if hint else "")
                                + ": the reference converts CLIPModel and ViTModel")


def _clip_config(model: nn.Module) -> CLIPConfig:
    c, v, t = model.config, model.config.vision_config, model.config.text_config
    problems: list[str] = []
    act_v, act_t = _act(v, "vision", problems), _act(t, "text", problems)
    if act_v != act_t:
        problems.append(f"towers with different activations ({v.hidden_act}, {t.hidden_act})")
    if v.layer_norm_eps != t.layer_norm_eps:
        problems.append(f"towers with different LayerNorm epsilons ({v.layer_norm_eps}, {t.layer_norm_eps})")
    if t.eos_token_id not in (2, t.vocab_size - 1):
        problems.append(f"end-of-text id {t.eos_token_id} is not the highest id {t.vocab_size - 1} (the reference "
                        "reads the end-of-text token by argmax)")
    if t.eos_token_id == 2 and t.vocab_size != 49408:
        problems.append("the legacy eos_token_id 2 with a vocabulary other than CLIP's")
    _refuse("transformers CLIPModel", problems)
    vision = clip_vision_config(
        image_size=v.image_size, patch_size=v.patch_size, num_classes=c.projection_dim, width=v.hidden_size,
        depth=v.num_hidden_layers, mlp_dim=v.intermediate_size, heads=_attn_heads(v, "vision", problems),
        act=act_v, norm_eps=v.layer_norm_eps)
    text = CLIPTextConfig(context_length=t.max_position_embeddings, vocab_size=t.vocab_size, width=t.hidden_size,
                          depth=t.num_hidden_layers, heads=_attn_heads(t, "text", problems),
                          mlp_dim=t.intermediate_size, act=act_t, norm_eps=t.layer_norm_eps)
    _refuse("transformers CLIPModel", problems)
    return CLIPConfig(embed_dim=c.projection_dim, vision=vision, text=text)


def _vit_config(model: nn.Module) -> ViTConfig:
    vit = model.vit if type(model).__name__ == "ViTForImageClassification" else model
    c = vit.config
    problems: list[str] = []
    if getattr(vit, "pooler", None) is not None:
        problems.append("ViTModel's tanh pooler (a pretraining head; load with add_pooling_layer=False, as the "
                        "hf: registry does)")
    act = _act(c, "encoder", problems)
    heads = _attn_heads(c, "encoder", problems)
    _refuse(f"transformers {type(model).__name__}", problems)
    head = getattr(model, "classifier", None)
    num_classes = head.out_features if isinstance(head, nn.Linear) else 0
    return ViTConfig(image_size=c.image_size, patch_size=c.patch_size, in_chans=c.num_channels,
                     num_classes=num_classes, width=c.hidden_size, depth=c.num_hidden_layers,
                     mlp_dim=c.intermediate_size, heads=heads, qkv_bias=c.qkv_bias, act=act,
                     norm_eps=c.layer_norm_eps)


# -------------------------------------------------------------------------------------------------- state dicts


def _taker(sd: dict, used: set, what: str):
    """take(key): the source tensor, recorded as used; a missing one is a ConversionError naming it."""
    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise ConversionError(f"checkpoint does not match the reference {what}: missing keys: {key}")
        used.add(key)
        return sd[key]
    return take


def _block(src: str, dst: str, sd: dict, used: set, attn: str, out: str, norms: tuple[str, str]) -> dict:
    """One encoder layer: q/k/v concatenated into qkv (the reference's (3, h, d) split of its output), the rest
    renamed."""
    taken = _taker(sd, used, "model")

    def take(key):
        return taken(f"{src}.{key}")

    got = {f"{dst}.attn.qkv.weight": torch.cat([take(f"{attn}.{p}_proj.weight") for p in "qkv"])}
    if f"{src}.{attn}.q_proj.bias" in sd:
        got[f"{dst}.attn.qkv.bias"] = torch.cat([take(f"{attn}.{p}_proj.bias") for p in "qkv"])
    for part in ("weight", "bias"):
        got[f"{dst}.attn.proj.{part}"] = take(f"{attn}.{out}.{part}")
        got[f"{dst}.norm1.{part}"] = take(f"{norms[0]}.{part}")
        got[f"{dst}.norm2.{part}"] = take(f"{norms[1]}.{part}")
        got[f"{dst}.mlp.fc1.{part}"] = take(f"mlp.fc1.{part}")
        got[f"{dst}.mlp.fc2.{part}"] = take(f"mlp.fc2.{part}")
    return got


def _strict(out: dict, sd: dict, used: set, expected: dict, what: str) -> dict:
    extra = [k for k in sd if k not in used and not k.endswith(IGNORED_SUFFIXES)]
    missing = [k for k in expected if k not in out]
    bad = [f"{k}: source {tuple(out[k].shape)} vs reference {tuple(expected[k])}" for k in out
           if k in expected and tuple(out[k].shape) != tuple(expected[k])]
    unknown = [k for k in out if k not in expected]
    if extra or missing or bad or unknown:
        parts = [f"{label}: {', '.join(keys)}" for label, keys in
                 (("missing keys", missing), ("unexpected keys", extra + unknown), ("shape mismatches", bad)) if keys]
        raise ConversionError(f"checkpoint does not match the reference {what}: " + "; ".join(parts))
    return out


def convert_clip_state_dict(sd: dict[str, torch.Tensor], config: CLIPConfig) -> dict[str, torch.Tensor]:
    """A transformers CLIPModel state_dict on the reference CLIP's keys (pure, strict)."""
    used: set[str] = set()
    take = _taker(sd, used, "CLIP")

    ve, te = "vision_model.embeddings", "text_model.embeddings"
    out = {
        "visual.cls_token": take(f"{ve}.class_embedding").reshape(1, 1, -1),
        "visual.patch_embed.proj.weight": (w := take(f"{ve}.patch_embedding.weight")).reshape(w.shape[0], -1),
        "visual.pos_embed": take(f"{ve}.position_embedding.weight").unsqueeze(0),
        "visual.head.weight": take("visual_projection.weight"),  # Linear (E, D) both sides
        "text.token_embedding.weight": take(f"{te}.token_embedding.weight"),
        "text.positional_embedding": take(f"{te}.position_embedding.weight"),
        "text.text_projection": take("text_projection.weight").T,  # x @ P == Linear with weight Pᵀ
        "logit_scale": take("logit_scale").reshape(()),
    }
    for part in ("weight", "bias"):
        out[f"visual.norm_pre.{part}"] = take(f"vision_model.pre_layrnorm.{part}")
        out[f"visual.norm.{part}"] = take(f"vision_model.post_layernorm.{part}")
        out[f"text.ln_final.{part}"] = take(f"text_model.final_layer_norm.{part}")
    for tower, src, depth in (("visual", "vision_model", config.vision.depth), ("text", "text_model",
                                                                                 config.text.depth)):
        for i in range(depth):
            out.update(_block(f"{src}.encoder.layers.{i}", f"{tower}.blocks.{i}", sd, used, "self_attn", "out_proj",
                              ("layer_norm1", "layer_norm2")))
    with torch.device("meta"):
        expected = {k: v.shape for k, v in CLIP(config).state_dict().items()}
    return _strict(out, sd, used, expected, "CLIP")


def convert_vit_state_dict(sd: dict[str, torch.Tensor], config: ViTConfig,
                           prefix: str = "") -> dict[str, torch.Tensor]:
    """A transformers ViTModel (prefix "") or ViTForImageClassification (prefix "vit.") state_dict on the reference
    ViT's keys (pure, strict)."""
    used: set[str] = set()
    take = _taker(sd, used, "ViT")

    e = f"{prefix}embeddings"
    out = {"cls_token": take(f"{e}.cls_token"), "pos_embed": take(f"{e}.position_embeddings"),
           "patch_embed.proj.weight": (w := take(f"{e}.patch_embeddings.projection.weight")).reshape(w.shape[0], -1),
           "patch_embed.proj.bias": take(f"{e}.patch_embeddings.projection.bias"),
           "norm.weight": take(f"{prefix}layernorm.weight"), "norm.bias": take(f"{prefix}layernorm.bias")}
    if config.num_classes:
        out["head.weight"], out["head.bias"] = take("classifier.weight"), take("classifier.bias")
    for i in range(config.depth):
        out.update(_block(f"{prefix}layers.{i}", f"blocks.{i}", sd, used, "attention", "o_proj",
                          ("layernorm_before", "layernorm_after")))
    with torch.device("meta"):
        expected = {k: v.shape for k, v in ViT(config).state_dict().items()}
    return _strict(out, sd, used, expected, "ViT")


def convert_state_dict(sd: dict[str, torch.Tensor], config: CLIPConfig | ViTConfig) -> dict[str, torch.Tensor]:
    """Either mapping by the config's kind (the agreement suite's gradient rows map gradients with it)."""
    if isinstance(config, CLIPConfig):
        return convert_clip_state_dict(sd, config)
    prefix = "vit." if any(k.startswith("vit.") for k in sd) else ""
    return convert_vit_state_dict(sd, config, prefix)


def from_hf(model: nn.Module, copy: bool = True) -> CLIP | ViT:
    """A reference CLIP (from a CLIPModel) or ViT (from a ViTModel / ViTForImageClassification) carrying its
    weights, on its device and dtype, in eval mode (copy=False: sharing the library's memory where it can)."""
    config = config_from_hf(model)
    cls = CLIP if isinstance(config, CLIPConfig) else ViT
    return materialize(cls, config, convert_state_dict(model.state_dict(), config), copy)
