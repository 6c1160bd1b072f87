"""Batched tensor preprocessing of in-memory images against the models' own per-image (PIL) transforms."""

import numpy as np
import pytest
import timm
import torch
from torchvision import transforms as T

from harness import data
from harness.data.transforms import BatchTransform, batched
from harness.methods.features import extract
from harness.models.open_clip import create as load_open_clip
from harness.models.open_clip import transform as open_clip_transform
from harness.models.timm import transform as timm_transform


@pytest.fixture(scope="module")
def images():
    test = data.load("fashion_mnist", "test")
    return test, data.images.balanced_subset(test.labels, 3, seed=0)


def per_image(transform, test, rows):
    return torch.stack([transform(data.images.to_pil(test.dataset[int(r)]["image"])) for r in rows])


@pytest.mark.parametrize("make", [
    lambda: timm_transform(timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=4, depth=1,
                                             pretrained_cfg_overlay={"input_size": (3, 28, 28), "crop_pct": 1.0})),
    lambda: timm_transform(timm.create_model("resnet18", pretrained_cfg_overlay={"input_size": (3, 32, 32),
                                                                                   "crop_pct": 1.0})),
    lambda: timm_transform(timm.create_model("vit_tiny_patch16_224", depth=1)),  # 28 -> 248 bicubic, crop 224
    lambda: open_clip_transform(load_open_clip("ViT-S-16", force_image_size=32)),
    lambda: data.images.GrayscaleTransform(channels=3),
])
def test_batch_equals_per_image(make, images):
    transform = make()
    fast = batched(transform)
    assert isinstance(fast, BatchTransform)
    test, rows = images
    slow = per_image(transform, test, rows)
    got = fast(torch.from_numpy(test.pixels(rows)))
    assert got.shape == slow.shape and got.dtype == torch.float32
    # torchvision's uint8 resize follows PIL's fixed-point kernel, not bit for bit: measured here, 28 -> 32 bicubic
    # 9 of 30,720 pixels one grey level apart, 28 -> 248 0.3% of pixels up to two levels; the rest equal.
    # ToTensor / Normalize are the same operations on the same numbers.
    diff = (got - slow).abs()
    one_level = 1 / 255 / min(fast.std)
    assert diff.max() <= 2 * one_level * 1.0001 and (diff > 0).float().mean() <= 1e-2


def test_unknown_steps_keep_the_per_image_path():
    assert batched(T.Compose([T.RandomResizedCrop(32), T.ToTensor()])) is None
    assert batched(T.Compose([T.Resize(32, interpolation=T.InterpolationMode.NEAREST), T.ToTensor(),
                              T.Normalize([0.5] * 3, [0.5] * 3)])) is None
    assert batched(lambda image: image) is None


def test_extract_uses_the_batch_path_for_in_memory_data(images, tmp_path):
    test, rows = images
    transform = open_clip_transform(load_open_clip("ViT-S-16", force_image_size=32))
    proj = torch.randn(3 * 32 * 32, 8)
    fast = extract(lambda x: x.flatten(1) @ proj, test, transform, indices=rows, model_id="p", weights="w")
    slow = per_image(transform, test, rows).flatten(1) @ proj
    np.testing.assert_allclose(fast.features, slow.numpy(), rtol=0, atol=1e-3 * float(slow.abs().max()))
    assert fast.indices.tolist() == rows.tolist()
