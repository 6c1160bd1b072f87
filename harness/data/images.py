"""Image data sets as Hugging Face `datasets.Dataset`s with `image` and `label` (ClassLabel) columns (ImageData),
read a batch at a time (in-memory arrays) or image by image in DataLoader workers (ImageDataset).

Unreadable images: a corrupt or truncated file never stops a run half-way. `ImageDataset` returns None for
it, the loader's collate drops it, and the count of skipped files (with the first few names) is reported
with the features; see `harness.methods.features`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


@dataclass
class ImageData:
    """One split of a labelled image data set."""

    name: str
    split: str
    dataset: object  # datasets.Dataset with "image" and "label" columns
    classnames: list[str]
    fingerprint: str  # identifies the files (harness.infra.inputs): part of every cache key of its images
    templates: list[str] | dict[str, list[str]] | None = None  # zero-shot prompts ("{}" for the class name)
    # how a stored image becomes RGB (to_rgb): "convert", PIL's own conversion, as the peers that publish numbers on
    # this data set read it (CLIP_benchmark, webdataset's "pil" decoder, torchvision's ImageFolder: a 16-bit image
    # clipped at 255); "scaled", a 16-bit image scaled to 8 bits (your own folders: the picture, not its clipping)
    reading: str = "convert"
    sources: dict = dataclasses.field(default_factory=dict)  # {path: fingerprint} of the files it was read from

    def with_names(self, classnames: list[str]) -> ImageData:
        return self._replace(classnames=list(classnames))

    def with_templates(self, templates) -> ImageData:
        return self._replace(templates=templates)

    def _replace(self, **changes) -> ImageData:
        """A copy with `changes`, sharing what was already read from Arrow (the pixels, the labels)."""
        new = dataclasses.replace(self, **changes)
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k in ("in_memory", "_array", "labels")})
        return new

    def __len__(self) -> int:
        return len(self.dataset)

    @functools.cached_property
    def in_memory(self) -> bool:
        """True when the images are uint8 arrays in the table (not encoded files): they can be read as a batch."""
        import datasets

        return isinstance(self.dataset.features["image"], (datasets.Array2D, datasets.Array3D))

    @functools.cached_property
    def _array(self) -> np.ndarray:
        # the whole image column read from Arrow once (47 MB for Fashion-MNIST's training set)
        column = self.dataset.select_columns(["image"]).with_format("numpy")[:]["image"]
        return np.asarray(column, dtype=np.uint8)

    def pixels(self, rows: np.ndarray) -> np.ndarray:
        """Rows of an in-memory data set as one uint8 array, (B, H, W) or (B, H, W, C)."""
        return self._array[np.asarray(rows)]

    @functools.cached_property
    def labels(self) -> np.ndarray:
        # one column read from Arrow at once (indexing the column iterates row by row)
        return np.asarray(self.dataset.select_columns(["label"]).with_format("numpy")[:]["label"])

    @property
    def identity(self) -> dict:
        """What a cache of this split's images must be keyed by: its files, its split, its reading, and its labels
        and class names (a class-name mapping changed over the same files changes every label)."""
        import hashlib

        return {"files": self.fingerprint, "split": self.split, "reading": self.reading,
                "labels": hashlib.sha256(np.ascontiguousarray(self.labels, np.int64).tobytes()).hexdigest()[:16],
                "classnames": hashlib.sha256("\0".join(self.classnames).encode()).hexdigest()[:16]}


FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530  # training-set pixel mean and standard deviation


def grayscale_tensors(data: ImageData, idx: np.ndarray, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows idx of a 28×28 grayscale data set as normalised (N, channels, H, W) float tensors, and labels:
    the whole subset in memory, for training from scratch."""
    x = torch.from_numpy(data.pixels(idx).astype(np.float32) / 255.0)
    x = ((x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD)[:, None]
    return x.expand(-1, channels, -1, -1).contiguous(), torch.from_numpy(np.asarray(data.labels[idx]))


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def decoded_tensors(data: ImageData, idx: np.ndarray, size: int, workers: int = 0,
                    batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Rows idx of an image data set decoded, resized (shorter side) and centre-cropped to size × size and
    normalised with ImageNet's mean and std: (N, 3, size, size) float32 in memory, labels, and the rows kept.
    For training small models on data sets of JPEGs (ImageNet subsets at low resolution); unreadable images
    are skipped (and named in a warning)."""
    import warnings

    from torchvision import transforms as T
    from tqdm.auto import tqdm

    tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    loader = torch.utils.data.DataLoader(ImageDataset(data, tf, idx), batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate)
    xs, ys, kept, bad = [], [], [], []
    for images, labels, rows, errors in tqdm(loader, desc=f"decode {data.name} {data.split}", unit="batch",
                                             dynamic_ncols=True, leave=False):
        bad += [message for _, message in errors]
        if images is not None:
            xs.append(images)
            ys.append(labels)
            kept.append(rows)
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s), e.g. {bad[:3]}", stacklevel=2)
    return torch.cat(xs), torch.cat(ys), torch.cat(kept).numpy()


@dataclass(frozen=True)
class GrayscaleTransform:
    """The same preprocessing for one PIL image: (channels, H, W). A dataclass, so that its repr (part of the
    feature-cache key) is the same in every process."""

    channels: int = 1

    def __call__(self, image: Image.Image) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
        return ((x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD)[None].expand(self.channels, -1, -1).contiguous()

    @staticmethod
    def geometry(image: Image.Image) -> torch.Tensor:
        """The uint8 part: (1, H, W), one grey plane (harness.data.transforms.preprocess)."""
        return torch.from_numpy(np.array(image.convert("L"), dtype=np.uint8))[None]


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` examples of every class, drawn with a fixed seed, in increasing order.

    The first k of each class's permutation are taken, so a smaller subset is inside every larger one
    drawn with the same seed (nested subsets)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if per_class > len(idx):
            raise ValueError(f"class {c} has {len(idx)} examples, fewer than the {per_class} asked for")
        chosen.append(idx[rng.permutation(len(idx))[:per_class]])
    return np.sort(np.concatenate(chosen))


def load_local(builder: str, **kwargs):
    """datasets.load_dataset(builder, **kwargs) for files on this disk (an image folder, parquet files), without
    its progress bars: "Downloading data: 100% 24/24 files" names a copy of local files, not a download. A hub
    download keeps them (it is long work)."""
    import datasets

    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(builder, **kwargs)
    finally:
        if not quiet:
            datasets.enable_progress_bars()


def decode(image) -> Image.Image:
    """The stored image as PIL decodes it (mode untouched, pixels loaded): from a PIL image, a (H, W) / (H, W, C)
    uint8 array, datasets' {"bytes","path"}, or an image in a webdataset shard (harness.data.wds: {"shard",
    "member", "offset", "size"}). A corrupt or truncated file fails here."""
    if image is None:
        raise ValueError("no image")
    if isinstance(image, dict) and "shard" in image:  # a sample of a webdataset shard
        from .wds import read_image

        image = Image.open(io.BytesIO(read_image(image)))
    elif isinstance(image, dict):  # an undecoded datasets.Image
        image = Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"])
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8, copy=False))  # datasets' numpy format widens to int64
    image.load()  # decode now, so that a corrupt file fails here
    return image


def to_rgb(image: Image.Image, reading: str = "convert") -> Image.Image:
    """An RGB image. reading "convert": PIL's own conversion, what CLIP_benchmark, webdataset and torchvision do (a
    16-bit grayscale image is clipped at 255, alpha dropped, a palette through its colours). "scaled": the same,
    but a 16-bit grayscale image (I;16) scaled to 8 bits (value // 257) before: its picture, not its clipping."""
    if reading == "scaled" and image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image, dtype=np.uint32) // 257).astype(np.uint8))
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # a palette with transparency goes through RGBA, as PIL advises
    return image.convert("RGB")


def to_pil(image, reading: str = "convert") -> Image.Image:
    """decode, then to_rgb."""
    return to_rgb(decode(image), reading)


class ImageDataset(torch.utils.data.Dataset):
    """(transformed image, label, index) for the rows `indices` of an ImageData; None for an unreadable image.
    The image is read in the data set's reading (to_rgb) unless `raw`: then the transform gets it as decoded."""

    def __init__(self, data: ImageData, transform, indices: np.ndarray | None = None, raw: bool = False):
        import datasets

        self.ds = data.dataset
        if isinstance(self.ds.features["image"], datasets.Image):  # decode ourselves, to catch corrupt files
            self.ds = self.ds.cast_column("image", datasets.Image(decode=False))
        self.transform, self.reading, self.raw = transform, data.reading, raw
        self.indices = np.arange(len(data)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        idx = int(self.indices[i])
        row = self.ds[idx]
        try:
            image = decode(row["image"])
            image = self.transform(image if self.raw else to_rgb(image, self.reading))
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for truncated / corrupt files; no image
            return None, idx, f"{image_name(row['image'], idx)}: {type(e).__name__}: {e}"
        except Image.DecompressionBombError as e:  # larger than twice PIL.Image.MAX_IMAGE_PIXELS
            return None, idx, (f"{image_name(row['image'], idx)}: skipped, past Pillow's decompression-bomb limit "
                               f"({e}); if the image is trusted, raise PIL.Image.MAX_IMAGE_PIXELS before the run")
        return image, int(row["label"]), idx


def image_name(cell, row: int) -> str:
    """How an unreadable image is named: its file, its shard and member, or its row."""
    if isinstance(cell, dict) and "shard" in cell:
        return f"{cell['shard']}:{cell['member']}"
    return (cell.get("path") if isinstance(cell, dict) else None) or f"row {row}"


def collate(batch):
    """Stack the readable examples; return the unreadable ones as (row, message) beside them."""
    good = [b for b in batch if b[0] is not None]
    bad = [(b[1], b[2]) for b in batch if b[0] is None]
    if not good:
        return None, None, None, bad
    images, labels, idx = zip(*good)
    return torch.stack(images), torch.tensor(labels), torch.tensor(idx), bad
