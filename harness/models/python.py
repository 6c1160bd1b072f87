"""Your own model in the registry: "python:MODULE:FACTORY" (harness.models).

MODULE is imported from the current directory or PYTHONPATH; FACTORY(**kwargs) (kwargs from the declaration's
dict form) returns an nn.Module that maps an image batch (B, 3, H, W) to features (B, D) with `encode_image` if it
has one, else with `forward`. Optional attributes of the module:
  encode_text(tokens) -> (B, D) and tokenizer(list of str) -> tokens: a CLIP-like model (the zero_shot suite)
  data_config: timm's preprocessing facts ({"input_size": (3, 224, 224), "mean": ..., "std": ..., "interpolation":
               "bicubic", "crop_pct": 0.875}); timm's 224-pixel ImageNet defaults for what it leaves out
The declaration's `data_cfg` overrides data_config; its `weights` may name a state_dict file (loaded strictly,
weights-only). torch.manual_seed(seed) runs before the factory, so random initialisations repeat.

    # mypkg/models.py
    def build():
        return MyEncoder()          # forward(x) -> features

    python -m harness run linear_probe --set 'models=["python:mypkg.models:build"]'
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import torch

from ..infra import inputs
from ..infra.suite import ConfigError
from . import Model, ModelSpec


def factory(spec: ModelSpec):
    module_name, sep, attr = spec.name.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"python model {spec.name!r}: expected python:MODULE:FACTORY (e.g. "
                          "python:mypkg.models:build)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # "the current directory or PYTHONPATH", also under pytest and torchrun
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"python model {spec.name!r}: module {module_name!r} cannot be imported ({e}); run from "
                          "the folder that holds it, or put that folder on PYTHONPATH") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"python model {spec.name!r}: {module_name} has no callable {attr!r}")
    return fn


def check(spec: ModelSpec) -> None:
    factory(spec)
    if spec.weights != "random" and not Path(spec.weights).is_file():
        raise ConfigError(f"weights {spec.weights!r} for python model {spec.name!r} are neither 'random' nor an "
                          "existing state_dict file")


def data_config(module: torch.nn.Module, spec: ModelSpec) -> dict:
    """timm's resolved preprocessing facts: the module's data_config, the declaration's data_cfg over it, timm's
    defaults for the rest."""
    import timm.data

    given = {**(getattr(module, "data_config", None) or {}), **(spec.data_cfg or {})}
    # nothing given: timm's defaults, a 224-pixel input (resolve_data_config refuses an empty dict)
    return timm.data.resolve_data_config(given or {"input_size": (3, 224, 224)})


def load(spec: ModelSpec, seed: int = 0, device: torch.device | str = "cpu", cache_dir=None) -> Model:
    torch.manual_seed(seed)
    module = factory(spec)(**spec.kwargs)
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"python model {spec.name!r}: the factory returned a {type(module).__name__}, not an "
                          "nn.Module")
    if spec.weights != "random":
        inputs.fingerprint(spec.weights)  # what a finished unit read (harness.infra.inputs)
        try:
            module.load_state_dict(torch.load(spec.weights, map_location="cpu", weights_only=True), strict=True)
        except RuntimeError as e:  # torch names the missing, unexpected and mis-shaped tensors
            raise ConfigError(f"weights {spec.weights} do not load exactly into python model {spec.name!r}: "
                              + " ".join(str(e).split())[:600]) from None
    return wrap(module.to(device).eval(), spec)


def wrap(module: torch.nn.Module, spec: ModelSpec, tokenizer=None) -> Model:
    """The Model of a user's module as this registry reads one (module docstring): its data_config (or timm's
    defaults), encode_image or forward, and encode_text with a tokenizer attribute (or `tokenizer`)."""
    import timm.data

    cfg = data_config(module, spec)
    encode_image = getattr(module, "encode_image", None) or module
    text = getattr(module, "encode_text", None)
    tokenizer = tokenizer if tokenizer is not None else getattr(module, "tokenizer", None)
    return Model(spec, "python", module, encode_image, timm.data.create_transform(**cfg),
                 input_size=tuple(cfg["input_size"]), encode_text=text if tokenizer is not None else None,
                 tokenizer=tokenizer if text else None)


def save_random(spec: ModelSpec, path: Path) -> Path:
    torch.manual_seed(0)
    path = Path(f"{path}.pt")
    torch.save(factory(spec)(**spec.kwargs).state_dict(), path)
    return path
