"""A model's evaluation preprocessing applied to a whole batch of in-memory images at once, as tensors.

timm's and open_clip's eval transforms take one PIL image at a time: resize (shorter side), centre crop, to
tensor, normalise. For a data set held in memory as uint8 arrays (Fashion-MNIST) that per-image Python work
costs more than a small model's forward pass. `batched(transform)` reads such a Compose and returns a
`BatchTransform` doing the same steps on a (B, H, W[, C]) uint8 batch with torchvision's tensor kernels, whose
uint8 antialiased resize follows PIL's (fixed point, rounded between passes; on Fashion-MNIST 28 -> 32 bicubic
9 of 30,720 pixels one grey level apart, 28 -> 248 0.3% up to two levels, the rest equal), then the same
arithmetic for ToTensor and Normalize. A transform it does not recognise returns None: the caller keeps
the per-image path.

`preprocess(transform)` splits a model's preprocessing where its images become floats: the geometry (decode,
resize, crop — uint8 in, uint8 out) and the finish (ToTensor's division by 255, Normalize), run as one batch on the
device. Decoded images are kept as uint8 (a quarter of float32's bytes; grayscale as one plane), and `describe`
gives the cache key of a transform from what it computes — the class and its parameters — never from its repr or
its address: a step the harness cannot describe (a torchvision Lambda, any user object) gives None, and nothing
keyed by it is reused.
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
        return self.finish(self.geometry(images))

    @property
    def finish(self) -> Finish:
        """ToTensor's division and Normalize, the grayscale plane repeated to `channels`."""
        return Finish(255.0, self.mean, self.std, None, self.channels)

    def geometry(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W) or (B, H, W, C) -> uint8 (B, C', crop, crop); C' = 1 for grayscale (repeated in finish)."""
        from torchvision.transforms.v2 import functional as TF

        x = images if images.ndim == 4 else images[..., None]  # (B, H, W, C) uint8
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        if self.resize is not None:  # torchvision's uint8 kernel: PIL's, rounding between its two passes as PIL does
            x = TF.resize(x.contiguous(), [self.resize], interpolation=TF.InterpolationMode(self.interpolation),
                          antialias=True)
        if self.crop is not None:
            x = TF.center_crop(x, [self.crop, self.crop])
        return x.contiguous()  # grayscale stays one plane: channels are made after resizing, in finish


@dataclass(frozen=True)
class Finish:
    """uint8 (B, C, H, W) -> float32, on whatever device the batch is: ToTensor's division (`divide`), Normalize's
    subtraction and division (`mean`, `std`), a rescale (`multiply`), one plane repeated to `channels` — the same
    float32 operations, in the same order, as the per-image transforms run, so the numbers are bit for bit theirs."""

    divide: float | None = 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    multiply: float | None = None
    channels: int | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.divide is not None:
            x = x.div(self.divide)
        if self.mean is not None:
            x = x.sub(torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)).div(
                torch.tensor(self.std, device=x.device).view(1, -1, 1, 1))
        if self.multiply is not None:
            x = x * self.multiply
        if self.channels is not None and x.shape[1] == 1 and self.channels != 1:
            x = x.expand(-1, self.channels, -1, -1)
        return x.contiguous()


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


# ------------------------------------------------------------------------------------------- content keys
# where steps are taken as what their parameters say: their classes are the libraries' own, their attributes data
DESCRIBED_MODULES = ("torchvision.transforms", "timm.data", "open_clip.transform", "harness.")


def _value(v):
    """A parameter as JSON-able data, or raise TypeError for anything that could hold code."""
    import enum

    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, enum.Enum):
        return f"{type(v).__name__}.{v.name}"
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _value(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, torch.Tensor):
        return [str(v.dtype), v.detach().cpu().flatten().tolist()]
    if hasattr(v, "tolist") and hasattr(v, "dtype"):  # a numpy array or scalar
        return [str(v.dtype), v.tolist()]
    raise TypeError(type(v).__name__)


def describe(transform) -> dict | None:
    """What `transform` computes, as data — its class (module and name) and its parameters, steps of a Compose in
    order — or None when that cannot be known: a class outside torchvision's, timm's, open_clip's and the harness's
    transforms, a Lambda (its function is code), a function, or a parameter that is not plain data. Two transforms
    with the same description compute the same images; None is never equal to anything (nothing is reused)."""
    import types

    cls = type(transform)
    if isinstance(transform, types.FunctionType):  # a library's module-level step (open_clip's _convert_to_rgb)
        name = f"{transform.__module__}.{transform.__qualname__}"
        return {"function": name} if transform.__module__.startswith(DESCRIBED_MODULES) and "<" not in name \
            else None
    if not cls.__module__.startswith(DESCRIBED_MODULES) or cls.__name__ == "Lambda":
        return None
    own = getattr(transform, "describe", None)
    if callable(own) and cls.__module__.startswith("harness."):
        return {"class": f"{cls.__module__}.{cls.__qualname__}", **own()}
    if isinstance(getattr(transform, "transforms", None), (list, tuple)):
        steps = [describe(t) for t in transform.transforms]
        return None if any(s is None for s in steps) else {"class": f"{cls.__module__}.{cls.__qualname__}",
                                                             "steps": steps}
    state = {k: v for k, v in vars(transform).items() if not k.startswith("_") and k != "training"} \
        if hasattr(transform, "__dict__") else {}
    if any(callable(v) and not isinstance(v, type) for v in state.values()):
        return None
    try:
        return {"class": f"{cls.__module__}.{cls.__qualname__}", **{k: _value(v) for k, v in sorted(state.items())}}
    except TypeError:
        return None


@dataclass
class Preprocess:
    """A model's preprocessing split where images become floats (module docstring).

    geometry: PIL image -> uint8 (C, H, W) tensor (every step before the transform's ToTensor), or None when the
              transform does not split: the whole transform runs per image and its float output is kept;
    finish:   the float part, run on a batch on the device (None: nothing left to run);
    batch:    the same geometry for a whole uint8 batch of in-memory images (BatchTransform), or None;
    key:      describe(transform), None when the transform cannot be described (nothing is reused);
    raw:      whether the transform reads the image as decoded (a Hugging Face processor composites transparency
              itself) instead of the data set's RGB reading."""

    transform: object
    geometry: object | None
    finish: Finish | None
    batch: BatchTransform | None
    key: dict | None
    raw: bool = False


_TO_TENSOR = ("ToTensor", "MaybeToTensor")


def _pil_to_uint8(image) -> torch.Tensor:
    """ToTensor's reading of an 8-bit PIL image, without its division: uint8 (C, H, W)."""
    import numpy as np

    if image.mode not in ("L", "RGB", "RGBA", "LA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        raise ValueError(f"an image of mode {image.mode} reached ToTensor: the preprocessing expects 8-bit images")
    x = torch.from_numpy(np.array(image, np.uint8, copy=True))
    x = x.view(image.size[1], image.size[0], len(image.getbands()))
    return x.permute((2, 0, 1)).contiguous()


class _Steps:
    """The steps of a Compose before its ToTensor, then ToTensor's reading: PIL -> uint8 (C, H, W)."""

    def __init__(self, steps: list):
        self.steps = steps

    def __call__(self, image) -> torch.Tensor:
        for step in self.steps:
            image = step(image)
        return _pil_to_uint8(image)


def preprocess(transform) -> Preprocess:
    """The Preprocess of a model's transform (see Preprocess)."""
    from .images import GrayscaleTransform

    key = describe(transform)
    fast = batched(transform)
    split = getattr(transform, "split", None)
    if callable(split) and type(transform).__module__.startswith("harness."):  # the harness's own transforms
        geometry, finish = split()
        return Preprocess(transform, geometry, finish, fast, key, bool(getattr(transform, "raw_images", False)))
    if isinstance(transform, GrayscaleTransform):
        return Preprocess(transform, transform.geometry, fast.finish, fast, key)
    steps = list(getattr(transform, "transforms", None) or [])
    names = [type(s).__name__ for s in steps]
    at = next((i for i, n in enumerate(names) if n in _TO_TENSOR), None)
    after = steps[at + 1:] if at is not None else []
    if at is None or not type(steps[at]).__module__.startswith(DESCRIBED_MODULES) or len(after) > 1 or any(
            type(s).__name__ != "Normalize" or getattr(s, "inplace", False) for s in after):
        return Preprocess(transform, None, None, None, key)  # runs whole, per image
    mean = std = None
    if after:
        mean = tuple(float(v) for v in torch.as_tensor(after[0].mean, dtype=torch.float32).flatten())
        std = tuple(float(v) for v in torch.as_tensor(after[0].std, dtype=torch.float32).flatten())
    return Preprocess(transform, _Steps(steps[:at]), Finish(255.0, mean, std), fast, key)
