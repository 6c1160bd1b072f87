"""Library models, created the same way everywhere: timm by name, random or pretrained weights.

Weights are named by a string:
  "random"      timm's own initialisation after torch.manual_seed(seed)
  "pretrained"  timm's default pretrained tag, from the Hugging Face cache (or the hub when online)
  a file path   a local checkpoint in timm's format (loaded through pretrained_cfg_overlay=dict(file=...))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower")


def load_timm(name: str, weights: str = "random", seed: int = 0, **kwargs) -> torch.nn.Module:
    """A timm model in eval mode with the weights named by `weights` (see the module docstring)."""
    import timm

    torch.manual_seed(seed)
    if weights == "random":
        return timm.create_model(name, pretrained=False, **kwargs).eval()
    if weights == "pretrained":
        try:
            return timm.create_model(name, pretrained=True, **kwargs).eval()
        except Exception as e:  # the hub is unreachable and nothing is cached
            raise RuntimeError(
                f"pretrained weights for timm model {name!r} could not be loaded ({type(e).__name__}: {e}). "
                "Either put them in the Hugging Face cache (run once online, or copy ~/.cache/huggingface), "
                "or pass a local checkpoint file as the weights (a path instead of 'pretrained')."
            ) from e
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights {weights!r} are neither 'random', 'pretrained' nor an existing file")
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs).eval()


def photo(name: str) -> Image.Image:
    """One of the real colour photographs shipped inside scikit-image and scikit-learn (no download)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(f"{name}.jpg"))
    import skimage.data

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}: choose from {', '.join(PHOTOS)}")
    array = getattr(skimage.data, name)()
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return Image.fromarray(array[..., :3])


def timm_transform(model: torch.nn.Module):
    """The model's own evaluation preprocessing (resize, crop, normalise) from its pretrained_cfg."""
    import timm.data

    return timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))


def image_batch(transform, image_size: int, photos: list[str], n_random: int, seed: int) -> torch.Tensor:
    """Real photographs through a model's preprocessing, then standard-normal tensors: (B, 3, H, W) float64."""
    images = [transform(photo(p)) for p in photos]
    g = torch.Generator().manual_seed(seed)
    images += list(torch.randn(n_random, 3, image_size, image_size, generator=g))
    return torch.stack(images).double()


def load_open_clip(name: str, weights: str = "random", seed: int = 0, **kwargs) -> torch.nn.Module:
    """An open_clip model in eval mode. `weights`: "random", a pretrained tag ("openai",
    "laion2b_s34b_b79k", ...: from the Hugging Face cache, or the hub when online) or a local checkpoint file."""
    import open_clip

    torch.manual_seed(seed)
    if weights == "random":
        return open_clip.create_model(name, pretrained=None, **kwargs).eval()
    try:
        return open_clip.create_model(name, pretrained=weights, **kwargs).eval()
    except Exception as e:
        raise RuntimeError(
            f"open_clip weights {weights!r} for {name!r} could not be loaded ({type(e).__name__}: {e}). "
            "Pass a pretrained tag that is in the Hugging Face cache (fill it once online), "
            "or the path of a local checkpoint file."
        ) from e


def open_clip_transform(model: torch.nn.Module):
    """The model's own evaluation preprocessing (open_clip's preprocess_cfg)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = getattr(model.visual, "preprocess_cfg", None) or {"size": model.visual.image_size}
    return image_transform_v2(PreprocessCfg(**cfg), is_train=False)


def build_architecture(arch: dict) -> torch.nn.Module:
    """A model to train from scratch, from its declaration: {"kind": "reference_vit" | "timm_vit" | "resnet",
    "kwargs": {...}} (the data-scale suite's architectures)."""
    kind, kw = arch["kind"], arch["kwargs"]
    if kind == "reference_vit":
        from .reference.vit import ViT, ViTConfig

        return ViT(ViTConfig(**kw))
    if kind == "timm_vit":
        import timm.models.vision_transformer as tv

        return tv.VisionTransformer(**kw)
    if kind == "resnet":
        from .cnn import SmallResNet

        return SmallResNet(**kw)
    raise ValueError(f"unknown architecture kind {kind!r}: use reference_vit, timm_vit or resnet")
