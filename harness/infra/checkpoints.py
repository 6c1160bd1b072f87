"""Models the harness trains and keeps (the data-scale runs, the zero-shot CLIP): where each lives, and how it is
saved and read back — safetensors weights with JSON metadata through harness.infra.cache, never a pickle.

A checkpoint is keyed by what it was trained from (a JSON-able key: config, unit) and the kind of device that
trained it ("cpu" or the GPU's name), so a GPU run never overwrites CPU-trained weights that another suite reads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from . import cache
from .results import device_kind, stable_hash


def path(cache_dir: Path, suite: str, key, device: torch.device | str) -> Path:
    return Path(cache_dir) / "checkpoints" / suite / stable_hash([key, device_kind(device)]) / "model.safetensors"


def save(path: Path, model: nn.Module, meta: dict) -> Path:
    """The model's state_dict and `meta` (what build() needs to rebuild it, statistics), atomically."""
    return cache.save_tensors(path, model.state_dict(), meta)


def load(path: Path, build: Callable[[dict], nn.Module], device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """(model, meta): build(meta) carrying the saved weights, in eval mode. A file that is damaged, or whose
    tensors do not fit the model build() makes (written by other code), raises cache.DamagedEntry."""
    tensors, meta = cache.read_tensors(path)
    try:
        model = build(meta)
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise cache.DamagedEntry(f"{path}: does not fit the model it claims to be ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:300]})") from None
    return model.to(device).eval(), meta


def load_or_none(path: Path, build: Callable[[dict], nn.Module], device: torch.device | str = "cpu"):
    """load(), or None when there is no checkpoint or a damaged one (warned about): the caller trains."""
    if not Path(path).exists():
        return None
    try:
        return load(path, build, device)
    except cache.DamagedEntry as e:
        cache.damaged(e)
        return None
