"""Hugging Face rows of the agreement suite: the reference CLIP and ViT vs transformers' CLIPModel and ViTModel with
the same weights (harness.convert.hf), the same tolerances and per-block report as the timm and open_clip rows.

The inputs are the suite's photographs and captions through the model's own preprocessing (harness.models.hf:
the checkpoint's image processor and tokenizer); transformers runs with its default attention (sdpa)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import models
from ..convert.hf import convert_state_dict, from_hf
from ..data.photos import image_batch
from ..methods.numerics import capture, compare_gradients, sweep
from ..models.hf import transformers_model

CLIP_OUTPUTS = ["image_embedding", "text_embedding", "logits"]
VIT_OUTPUTS = ["features"]


def _is_clip(model: nn.Module) -> bool:
    return hasattr(model, "text") or type(model).__name__ == "CLIPModel"


def _stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Each encoder layer, named as the reference names it."""
    if hasattr(model, "text"):  # reference CLIP
        return ([(f"visual.blocks.{i}", b) for i, b in enumerate(model.visual.blocks)]
                + [(f"text.blocks.{i}", b) for i, b in enumerate(model.text.blocks)])
    if hasattr(model, "blocks"):  # reference ViT
        return [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
    if type(model).__name__ == "CLIPModel":
        return ([(f"visual.blocks.{i}", b) for i, b in enumerate(model.vision_model.encoder.layers)]
                + [(f"text.blocks.{i}", b) for i, b in enumerate(model.text_model.encoder.layers)])
    return [(f"blocks.{i}", b) for i, b in enumerate(model.layers)]  # ViTModel


def _clip_outputs(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """The L2-normalised embeddings and the image–text logits of one pass, each as its own library computes them
    (the reference's encode_image / encode_text and forward(); transformers' CLIPModel forward: image_embeds,
    text_embeds, logits_per_image)."""
    if hasattr(model, "text"):
        image, text = model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)
        return {"image_embedding": image, "text_embedding": text, "logits": model.scale() * image @ text.T}
    out = model(input_ids=tokens, pixel_values=images)
    return {"image_embedding": out.image_embeds, "text_embedding": out.text_embeds, "logits": out.logits_per_image}


def _vit_outputs(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The [CLS] features after the final LayerNorm (what a probe reads)."""
    if hasattr(model, "blocks"):
        return {"features": model.forward_head(model.forward_features(images), pre_logits=True)}
    return {"features": model(pixel_values=images).last_hidden_state[:, 0]}


def _inputs(resolved: models.Model, config: dict, seed: int, device, pairs: int | None = None):
    images = image_batch(resolved.transform, resolved.input_size[1], config["photos"], config["random_inputs"],
                         seed)[:pairs]
    tokens = None
    if resolved.tokenizer is not None:
        captions = config["captions"][: len(images)]
        if len(captions) != len(images):
            raise ValueError(f"the suite config needs {len(images)} captions (one per image), has {len(captions)}")
        tokens = resolved.tokenizer(captions).to(device)
    return images.to(device), tokens


def model_rows(spec: models.ModelSpec, config: dict, ctx, dtypes: list[str]) -> list[dict]:
    """Reference vs transformers on the outputs and after every encoder layer, per dtype and attention backend."""
    resolved = models.resolve(spec, seed=ctx.seed, device=ctx.device)
    model = transformers_model(resolved)
    clip = _is_clip(model)
    images, tokens = _inputs(resolved, config, ctx.seed, ctx.device)

    def run(m, dt):
        fn = (lambda: _clip_outputs(m, images.to(dt), tokens)) if clip else (lambda: _vit_outputs(m, images.to(dt)))
        with torch.no_grad():
            return capture(_stages(m), fn)

    rows = sweep(model, from_hf, run, CLIP_OUTPUTS if clip else VIT_OUTPUTS, dtypes, ctx.device, "transformers")
    return [{**r, "n_inputs": len(images)} for r in rows]


def gradient_rows(spec: models.ModelSpec, config: dict, ctx, dtypes: list[str]) -> list[dict]:
    """Parameter gradients, every parameter mapped by the converter: of the contrastive loss of the image–text
    logits for a CLIP (the mean of both cross-entropies, each library's own logits), of a fixed random linear
    read-out's cross-entropy for a ViT (the features' squared norm would not do: after the final LayerNorm it is
    nearly constant, and the earlier stages' gradients would be round-off)."""
    resolved = models.resolve(spec, seed=ctx.seed, device=ctx.device)
    model = transformers_model(resolved)
    clip = _is_clip(model)
    images, tokens = _inputs(resolved, config, ctx.seed, ctx.device, config.get("gradient_pairs"))
    labels = torch.arange(len(images), device=ctx.device)
    g = torch.Generator().manual_seed(ctx.seed)
    width = model.config.hidden_size if not clip else 0
    readout = torch.randn(width, len(images), generator=g, dtype=torch.float64).to(ctx.device) if not clip else None

    def loss(m, dt):
        if clip:
            logits = _clip_outputs(m, images.to(dt), tokens)["logits"]
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        return F.cross_entropy(_vit_outputs(m, images.to(dt))["features"] @ readout.to(dt), labels)

    rows = compare_gradients(model, from_hf, convert_state_dict, loss, dtypes, "transformers")
    return [{**r, "n_inputs": len(images)} for r in rows]
