"""Training runs of the data-scale suite: a declared architecture trained from scratch on a nested,
class-balanced subset with the suite's recipe and step policy, kept as a checkpoint under the cache folder.

A run is named by its unit, "ARCH:PER_CLASS:SEED" (vit_reference:1200:0). The data-scale suite trains and evaluates
them; the model registry serves them as "data_scale:UNIT" (harness.models.data_scale) to any other suite, from the
checkpoint, training it first (the same deterministic run) when the suite has not.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..data import images as data_lib
from ..data import load as load_data
from ..infra import cache, checkpoints
from ..infra.results import stable_hash
from .train import Recipe, train

_TENSORS: dict = {}  # decoded training images, per process: the largest subset once, smaller ones are inside it


def _datasets(config: dict):
    """The train and test splits of the suite's data set (config["data"]: a harness.data declaration)."""
    return load_data(config["data"], "train"), load_data(config["data"], "test")


def _classes(data: data_lib.ImageData, config: dict) -> np.ndarray | None:
    """The classes used: all (None), or `classes` of them spread evenly over the label ids (ImageNet-100: every
    10th of ImageNet's 1,000)."""
    count = config["data"].get("classes")
    total = len(data.classnames)
    return None if not count or count >= total else np.arange(0, total, total // count)[:count]


def _subset(data: data_lib.ImageData, per_class: int, seed: int, classes: np.ndarray | None) -> np.ndarray:
    """Nested, class-balanced rows of `data`, from the chosen classes only."""
    if classes is None:
        return data_lib.balanced_subset(data.labels, per_class, seed)
    keep = np.flatnonzero(np.isin(data.labels, classes))
    return keep[data_lib.balanced_subset(data.labels[keep], per_class, seed)]


def _tensors(data: data_lib.ImageData, idx: np.ndarray, config: dict, classes):
    """Rows idx in memory as normalised float tensors, labels renumbered 0..C-1 when classes are chosen, and
    the rows kept (an unreadable image is skipped)."""
    d = config["data"]
    if data.in_memory:  # 28×28 grayscale arrays (Fashion-MNIST): normalised as they are
        (x, y), rows = data_lib.grayscale_tensors(data, idx), idx
    else:  # image files: decoded, resized and cropped to image_size

        x, y, rows = data_lib.decoded_tensors(data, idx, d["image_size"], workers=d.get("workers", 0))
    if classes is not None:
        y = torch.from_numpy(np.searchsorted(classes, y.numpy()))
    return x, y, rows


def load_subset(config: dict, per_class: int):
    """(rows, training images and labels for per_class images per class, (test images, test labels, test rows),
    the training set's size), decoded once per process for the largest size and sliced for the nested smaller ones."""
    d = config["data"]
    train_set, test_set = _datasets(config)
    classes = _classes(train_set, config)
    key = (train_set.fingerprint, test_set.fingerprint, stable_hash(d), max(sizes(config)))
    if key not in _TENSORS:
        _TENSORS.clear()
        big = _subset(train_set, max(sizes(config)), d["subset_seed"], classes)
        test_idx = _subset(test_set, d["test_per_class"], 0, classes)
        _TENSORS[key] = (big, _tensors(train_set, big, config, classes), _tensors(test_set, test_idx, config, classes))
    big, (x, y, rows), test = _TENSORS[key]
    idx = _subset(train_set, per_class, d["subset_seed"], classes)  # nested: inside `big`
    pos = np.flatnonzero(np.isin(rows, idx))  # rows is sorted, like idx
    return rows[pos], x[pos], y[pos], test, len(train_set)


def sizes(config: dict) -> list[int]:
    return [n for a in config["architectures"] for n in a.get("sizes", config["sizes_per_class"])]


def steps_for(images: int, config: dict) -> int:
    """The suite's step policy: max(min_steps, ceil(epochs × images / batch size))."""
    policy = config["step_policy"]
    return max(policy["min_steps"], math.ceil(policy["epochs"] * images / config["recipe"]["batch_size"]))


def trained(unit: str, config: dict, device: torch.device, cache_dir: Path) -> tuple[torch.nn.Module, dict, Path]:
    """(model, training statistics, checkpoint path) of one unit, trained once and kept under the cache folder.

    Under the checkpoint's lock: whoever finds no checkpoint trains and saves it; anyone else wanting it meanwhile
    (the other process of a split run, the linear-probe suite probing this model, a second run) waits and reads
    it. Training is deterministic for a unit, so it does not matter who trains first."""
    arch_id, per_class, seed = unit.split(":")
    per_class, seed = int(per_class), int(seed)
    arch = architecture(config, arch_id)
    path = checkpoints.path(cache_dir, "data_scale", [config, unit], device)
    with cache.lock(path, f"training data-scale run {unit}"):
        loaded = checkpoints.load_or_none(path, lambda meta: build_architecture(meta["arch"]), device)
        if loaded is not None and "stats" in loaded[1]:  # (checkpoints of older code hold no statistics: retrained)
            return loaded[0], loaded[1]["stats"], path
        # nested: the subset drawn with the data seed is a prefix of each class's permutation, so every smaller
        # subset lies inside every larger one; the seed below varies initialisation and batch order only
        idx, x, y, _, _ = load_subset(config, per_class)
        recipe = Recipe(steps=steps_for(len(idx), config), **config["recipe"])
        torch.manual_seed(seed)
        model = build_architecture(arch).to(device)
        stats = train(model, x.to(device), y.to(device), recipe, seed=seed, desc=f"{arch_id} n={len(idx)} seed={seed}")
        checkpoints.save(path, model, {"arch": arch, "unit": unit, "stats": stats})
    return model, stats, path


def architecture(config: dict, arch_id: str) -> dict:
    """The declared architecture with this id."""
    return next(a for a in config["architectures"] if a["id"] == arch_id)


def build_architecture(arch: dict) -> torch.nn.Module:
    """A model to train from scratch, from its declaration: {"kind": "reference_vit" | "reference_hybrid" |
    "timm_vit" | "resnet", "kwargs": {...}} (the data-scale suite's architectures; a hybrid is a reference ViT
    whose kwargs hold a "stem": StemConfig fields)."""
    kind, kw = arch["kind"], arch["kwargs"]
    if kind in ("reference_vit", "reference_hybrid"):
        from ..reference.hybrid import StemConfig
        from ..reference.vit import ViT, ViTConfig

        stem = kw.get("stem")
        if stem is not None:  # declared as JSON: lists become the config's tuples
            kw = {**kw, "stem": StemConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in stem.items()})}
        return ViT(ViTConfig(**kw))
    if kind == "timm_vit":
        import timm.models.vision_transformer as tv

        return tv.VisionTransformer(**kw)
    if kind == "resnet":
        from ..reference.cnn import SmallResNet

        return SmallResNet(**kw)
    raise ValueError(f"unknown architecture kind {kind!r}: use reference_vit, reference_hybrid, timm_vit or resnet")
