"""A model's evaluation preprocessing applied to a whole batch of in-memory images at once, as tensors.

timm's and open_clip's eval transforms take one PIL image at a time: resize (shorter side), centre crop, to
tensor, normalise. For a data set held in memory as uint8 arrays (Fashion-MNIST) that per-image Python work
costs more than a small model's forward pass. `batched(transform)` reads such a Compose and returns a
`BatchTransform` doing the same steps on a (B, H, W[, C]) uint8 batch with torchvision's tensor kernels, whose
uint8 antialiased resize follows PIL's (fixed point, rounded between passes; on Fashion-MNIST 28 -> 32 bicubic
9 of 30,720 pixels one grey level apart, 28 -> 248 0.3% up to two levels, the rest equal), then the same
arithmetic for ToTensor and Normalize. A transform it does not recognise returns None: the caller keeps
the per-image path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchTransform:
    """uint8 (B, H, W) or (B, H, W, C) -> float32 (B, channels, crop, crop). A frozen dataclass: its repr is part
    of the feature-cache key and must be the same in every process."""

    resize: int | None  # shorter side after resizing; None: no resize
    interpolation: str  # "bilinear" or "bicubic" (antialiased, as PIL)
    crop: int | None  # centre crop size; None: no crop
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3  # grayscale input is repeated to this many channels (PIL's convert("RGB"))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        x = images if images.ndim == 4 else images[..., None]  # (B, H, W, C) uint8
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        if self.resize is not None:  # torchvision's uint8 kernel: PIL's, rounding between its two passes as PIL does
            x = TF.resize(x.contiguous(), [self.resize], interpolation=TF.InterpolationMode(self.interpolation),
                          antialias=True)
        if self.crop is not None:
            x = TF.center_crop(x, [self.crop, self.crop])
        if x.shape[1] == 1 and self.channels != 1:  # grayscale: channels made after resizing, one plane resized
            x = x.expand(-1, self.channels, -1, -1)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return ((x.float() / 255.0 - mean) / std).contiguous()  # ToTensor, then Normalize


def _size(value) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return int(value[0])
    if isinstance(value, (list, tuple)) and len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    return None


def batched(transform) -> BatchTransform | None:
    """The BatchTransform equal to `transform`, or None when a step is not one it knows."""
    from .images import FASHION_MNIST_MEAN, FASHION_MNIST_STD, GrayscaleTransform

    if isinstance(transform, GrayscaleTransform):
        return BatchTransform(None, "bilinear", None, (FASHION_MNIST_MEAN,) * transform.channels,
                              (FASHION_MNIST_STD,) * transform.channels, transform.channels)
    steps = getattr(transform, "transforms", None)
    if steps is None:
        return None
    resize = crop = mean = std = None
    interpolation, to_tensor = "bilinear", False
    for step in steps:
        name = type(step).__name__
        if name == "Resize" and resize is None and crop is None and not to_tensor:
            resize = _size(step.size)
            interpolation = str(step.interpolation.value)
            if resize is None or step.max_size is not None or interpolation not in ("bilinear", "bicubic") \
                    or step.antialias is False:
                return None
        elif name == "CenterCrop" and crop is None and not to_tensor:
            crop = _size(step.size)
            if crop is None:
                return None
        elif name in ("MaybeConvertMode", "_convert_to_rgb") or getattr(step, "__name__", "") == "_convert_to_rgb":
            if getattr(step, "mode", "RGB") != "RGB":
                return None
        elif name in ("ToTensor", "MaybeToTensor"):
            to_tensor = True
        elif name == "Normalize" and to_tensor and mean is None:
            mean = tuple(float(v) for v in torch.as_tensor(step.mean).flatten())
            std = tuple(float(v) for v in torch.as_tensor(step.std).flatten())
        else:
            return None
    if not to_tensor or mean is None or len(mean) != 3:
        return None
    return BatchTransform(resize, interpolation, crop, mean, std, 3)
