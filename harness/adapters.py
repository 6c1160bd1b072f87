"""One interface over timm, open_clip and the reference models: an image encoder and its preprocessing.

A model is declared in a suite as a dict:
  {"id": "vit_ti4", "library": "timm", "name": "vit_tiny_patch16_224",
   "kwargs": {"img_size": 28, "patch_size": 4}, "data_cfg": {...}, "weights": "random"}
  library "timm" | "open_clip"; kwargs go to the library's create function; data_cfg overrides timm's
  preprocessing facts (input_size, crop_pct, mean, std, interpolation); weights as in harness.models.
  library "data_scale": a model trained by the data-scale suite, {"unit": "resnet_small:1200:0"}, read from
  its checkpoint (trained first, the same way, when that suite has not run).
`reference(encoder)` gives the reference model converted from a library encoder, with the same transform.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .data import GrayscaleTransform
from .features import weights_hash
from .models import load_open_clip, load_timm, open_clip_transform, timm_transform


@dataclass
class Encoder:
    id: str  # unique name in tables and cache keys
    library: str  # "timm", "open_clip", "reference"
    module: nn.Module
    encode: Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) -> (B, D) features
    transform: Callable  # PIL image -> tensor, the model's own preprocessing
    weights: str  # hash of the weights


def _timm_features(model: nn.Module) -> Callable:
    return lambda x: model.forward_head(model.forward_features(x), pre_logits=True)


def _data_scale_encoder(spec: dict, device, cache_dir) -> Encoder:
    """A model the data-scale suite trains (its default profile), read from its checkpoint, or trained here first
    when the suite has not run yet (the same deterministic run, saved where the suite finds it)."""
    from .evals import data_scale
    from .suite import load_suite

    if cache_dir is None:
        raise ValueError(f"probing the data-scale model {spec['unit']!r} needs a cache folder (its checkpoint lives "
                         "there): run without --no-cache")
    model, _, _ = data_scale.trained(spec["unit"], load_suite("data_scale").get_config("default"), torch.device(device),
                                     Path(cache_dir))
    return Encoder(spec["id"], "data_scale", model, _timm_features(model), GrayscaleTransform(channels=1),
                   weights_hash(model))


def load_encoder(spec: dict, seed: int = 0, device: torch.device | str = "cpu", cache_dir=None) -> Encoder:
    library, name = spec["library"], spec.get("name")
    if library == "data_scale":
        return _data_scale_encoder(spec, device, cache_dir)
    weights = spec.get("weights", "random")
    kwargs = dict(spec.get("kwargs", {}))
    if library == "timm":
        if spec.get("data_cfg"):
            kwargs["pretrained_cfg_overlay"] = dict(spec["data_cfg"])
        model = load_timm(name, weights, seed=seed, **kwargs).to(device)
        return Encoder(spec["id"], "timm", model, _timm_features(model), timm_transform(model), weights_hash(model))
    if library == "open_clip":
        model = load_open_clip(name, weights, seed=seed, **kwargs).to(device)
        return Encoder(spec["id"], "open_clip", model, model.encode_image, open_clip_transform(model),
                       weights_hash(model))
    raise ValueError(f"unknown library {library!r} in model {spec.get('id')!r}: use 'timm' or 'open_clip'")


def reference(encoder: Encoder) -> Encoder:
    """The reference model carrying the library model's weights, with the library model's transform."""
    from .convert import from_open_clip, from_timm

    if encoder.library == "timm":
        ref = from_timm(encoder.module)
        encode = _timm_features(ref)
    elif encoder.library == "open_clip":
        ref = from_open_clip(encoder.module)
        encode = ref.encode_image
    else:
        raise ValueError(f"no reference for a {encoder.library} model")
    return Encoder(f"{encoder.id} (reference)", "reference", ref, encode, encoder.transform, encoder.weights)
