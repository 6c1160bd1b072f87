"""Real colour photographs shipped inside scikit-image and scikit-learn (no download), and batches of them through
a model's preprocessing: the inputs of the agreement suite and of harness.compare."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower")


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


def image_batch(transform, image_size: int, photos: list[str], n_random: int, seed: int) -> torch.Tensor:
    """Real photographs through a model's preprocessing, then standard-normal tensors: (B, 3, H, W) float64."""
    images = [transform(photo(p)) for p in photos]
    g = torch.Generator().manual_seed(seed)
    images += list(torch.randn(n_random, 3, image_size, image_size, generator=g))
    return torch.stack(images).double()
