"""What the converters share: their errors, and building a reference model around given weights."""

from __future__ import annotations

import torch
import torch.nn as nn


class UnsupportedModelError(ValueError):
    """The source model uses a feature the reference implementation does not have."""


class ConversionError(ValueError):
    """A checkpoint's keys or shapes do not match the reference model."""


def materialize(cls, config, weights: dict[str, torch.Tensor], copy: bool = True) -> nn.Module:
    """cls(config) built without initialising, carrying copies of `weights` (device and dtype as given), in eval
    mode; copies, so that training one model never changes the other. copy=False, for comparisons that only run
    the two models: a contiguous weight is shared, not copied (a ViT-L in float64 is 2.4 GB), and the others are
    copied as before, so the reference computes with the same values in the same memory layout either way."""
    with torch.device("meta"):
        model = cls(config)
    model.load_state_dict({k: v.detach() if not copy and v.is_contiguous() else v.detach().clone()
                           for k, v in weights.items()}, strict=True, assign=True)
    return model.eval()
