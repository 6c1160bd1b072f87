"""Data sets as Hugging Face `datasets.Dataset`s with `image` and `label` (ClassLabel) columns.

- Fashion-MNIST, the embedded default: read from the IDX files of Debian's `dataset-fashion-mnist`
  package; when they are absent, the hub copy `zalando-datasets/fashion_mnist` (online users only).
- ImageNet-1k, for users who have it: a local folder in ImageFolder layout (train/ and val/, one sub-folder
  per class id such as n01440764), or the hub's `ILSVRC/imagenet-1k` (gated; needs access and its cache).

Unreadable images: a corrupt or truncated file never stops a run half-way. `ImageDataset` returns None for
it, the loader's collate drops it, and the count of skipped files (with the first few names) is reported
with the features; see `harness.features`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
IMAGENET_ENV = "VITCLIP_IMAGENET_DIR"


@dataclass
class ImageData:
    """One split of a labelled image data set."""

    name: str
    split: str
    dataset: object  # datasets.Dataset with "image" and "label" columns
    classnames: list[str]
    fingerprint: str  # identifies the content: part of every feature-cache key

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


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def load_fashion_mnist(split: str, root: Path = FASHION_MNIST_DIR) -> ImageData:
    """Fashion-MNIST "train" (60,000) or "test" (10,000): 28×28 grayscale, 10 classes."""
    import datasets

    if split not in ("train", "test"):
        raise ValueError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}")
    prefix = "train" if split == "train" else "t10k"
    images_path, labels_path = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.exists() or not labels_path.exists():
        return _fashion_mnist_from_hub(split, root)
    pixels = _read_idx(images_path, 16).reshape(-1, 28, 28)
    labels = _read_idx(labels_path, 8)
    if len(pixels) != len(labels):
        raise ValueError(f"{images_path} holds {len(pixels)} images but {labels_path} {len(labels)} labels")
    h = hashlib.sha256()
    for p in (images_path, labels_path):
        h.update(p.read_bytes())
    features = datasets.Features({"image": datasets.Array2D((28, 28), "uint8"),
                                  "label": datasets.ClassLabel(names=FASHION_MNIST_CLASSES)})
    ds = datasets.Dataset.from_dict({"image": pixels, "label": labels.astype(np.int64)}, features=features)
    return ImageData("fashion_mnist", split, ds.with_format("numpy"), FASHION_MNIST_CLASSES, h.hexdigest()[:16])


def _fashion_mnist_from_hub(split: str, root: Path) -> ImageData:
    import datasets

    try:
        ds = datasets.load_dataset("zalando-datasets/fashion_mnist", split=split)
    except Exception as e:
        raise FileNotFoundError(
            f"Fashion-MNIST is not in {root} and the hub copy could not be loaded ({type(e).__name__}). "
            "Install the Debian package: apt-get install dataset-fashion-mnist"
        ) from e
    return ImageData("fashion_mnist", split, ds, ds.features["label"].names, ds._fingerprint)


def imagenet_classnames() -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def imagenet_wnids() -> list[str]:
    """ImageNet-1k's 1,000 WordNet ids in class-index order (the list timm ships)."""
    from importlib import resources

    text = resources.files("timm.data._info").joinpath("imagenet_synsets.txt").read_text()
    return text.split()


def imagenet_folder(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / ("train" if split == "train" else "val")


def check_imagenet_folder(root: str | os.PathLike, splits: list[str]) -> None:
    """Refuse, before any work, an ImageNet folder that cannot be read as one: a missing split folder, a class
    folder that is not one of ImageNet's WordNet ids, or splits with different classes."""
    from .suite import ConfigError

    known = set(imagenet_wnids())
    classes = {}
    for split in splits:
        folder = imagenet_folder(root, split)
        if not folder.is_dir():
            raise ConfigError(f"ImageNet folder {folder} does not exist: {root} must hold train/ and val/, one "
                              "sub-folder per class id (n01440764, ...); point data.imagenet_dir (or "
                              f"${IMAGENET_ENV}) at the folder that holds them")
        found = sorted(p.name for p in folder.iterdir() if p.is_dir())
        unknown = [c for c in found if c not in known]
        if unknown:
            raise ConfigError(f"{folder} has class folder(s) that are not ImageNet WordNet ids: "
                              f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}. Move them out "
                              "(the class list is ImageNet-1k's 1,000 synsets, timm/data/_info/imagenet_synsets.txt)")
        if not found:
            raise ConfigError(f"{folder} holds no class folders: expected one sub-folder per class id (n01440764, ...)")
        classes[split] = found
    if len({tuple(c) for c in classes.values()}) > 1:
        a, b = list(classes)[:2]
        diff = sorted(set(classes[a]) ^ set(classes[b]))
        raise ConfigError(f"the {a} and {b} folders of {root} hold different classes (e.g. {', '.join(diff[:5])}): "
                          "both splits need the same class folders")


def load_imagenet(split: str, root: str | os.PathLike | None = None) -> ImageData:
    """ImageNet-1k "train" or "validation": from `root` (or $VITCLIP_IMAGENET_DIR) in ImageFolder layout,
    else from the Hugging Face hub cache (ILSVRC/imagenet-1k). A folder may hold a subset of the classes; class
    names are open_clip's, looked up by WordNet id."""
    import datasets

    root = root or os.environ.get(IMAGENET_ENV)
    if root:
        check_imagenet_folder(root, [split])
        folder = imagenet_folder(root, split)
        # data_files named explicitly: given data_dir, datasets infers splits from file names, and ImageNet's
        # validation files (ILSVRC2012_val_00000001.JPEG) would become a "validation" split of their own
        ds = datasets.load_dataset("imagefolder", data_files={"train": str(folder / "**")}, split="train")
        index = {w: i for i, w in enumerate(imagenet_wnids())}
        names = [imagenet_classnames()[index[w]] for w in ds.features["label"].names]
        h = hashlib.sha256()
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                h.update(f"{p.relative_to(folder)}:{p.stat().st_size}".encode())
        return ImageData("imagenet", split, ds, names, h.hexdigest()[:16])
    try:
        ds = datasets.load_dataset("ILSVRC/imagenet-1k", split=split)
    except Exception as e:
        raise FileNotFoundError(
            "ImageNet-1k is not available. Provide it either (1) as a local folder in ImageFolder layout "
            f"(train/ and val/, one sub-folder per class id) named by {IMAGENET_ENV} or the suite config "
            "(imagenet_dir), or (2) through the Hugging Face hub: accept the terms of ILSVRC/imagenet-1k, log in, "
            f"and fill the cache once online (HF_DATASETS_OFFLINE=0). Cause: {type(e).__name__}: {e}"
        ) from e
    return ImageData("imagenet", split, ds, imagenet_classnames(), ds._fingerprint)


def check_source(d: dict, splits: list[str]) -> None:
    """A suite's data declaration ({"name", "imagenet_dir", ...}) checked before any work: a known data set, and
    for a local ImageNet folder its layout (check_imagenet_folder)."""
    from .suite import ConfigError

    if d["name"] not in ("fashion_mnist", "imagenet"):
        raise ConfigError(f"unknown data set {d['name']!r}: choose from fashion_mnist, imagenet")
    root = d.get("imagenet_dir") or os.environ.get(IMAGENET_ENV)
    if d["name"] == "imagenet" and root:
        check_imagenet_folder(root, splits)


def load(name: str, split: str, **kwargs) -> ImageData:
    loaders = {"fashion_mnist": _fashion_mnist_once, "imagenet": load_imagenet}
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}: choose from {', '.join(loaders)}")
    return loaders[name](split, **kwargs)


@functools.cache
def _fashion_mnist_once(split: str, root: Path = FASHION_MNIST_DIR) -> ImageData:
    """Fashion-MNIST is read from its files once per process (a few seconds) and shared by every suite."""
    return load_fashion_mnist(split, Path(root))


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


def to_pil(image) -> Image.Image:
    """A PIL RGB image from a PIL image, a (H, W) / (H, W, C) uint8 array, or datasets' {"bytes","path"}.

    Every mode becomes RGB: grayscale (L, LA, 1) as 3 identical channels, palette (P, PA) through its colours,
    CMYK through PIL's conversion, 16-bit grayscale (I;16) scaled to 8 bits (PIL's own conversion would clip it
    at 255), alpha dropped."""
    if isinstance(image, dict):  # an undecoded datasets.Image
        image = Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"])
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8, copy=False))  # datasets' numpy format widens to int64
    image.load()  # decode now, so that a corrupt file fails here
    if image.mode.startswith("I;16"):
        image = Image.fromarray((np.asarray(image, dtype=np.uint32) // 257).astype(np.uint8))
    elif image.mode in ("P", "PA"):
        image = image.convert("RGBA")  # a palette with transparency goes through RGBA, as PIL advises
    return image.convert("RGB")


class ImageDataset(torch.utils.data.Dataset):
    """(transformed image, label, index) for the rows `indices` of an ImageData; None for an unreadable image."""

    def __init__(self, data: ImageData, transform, indices: np.ndarray | None = None):
        import datasets

        self.ds = data.dataset
        if isinstance(self.ds.features["image"], datasets.Image):  # decode ourselves, to catch corrupt files
            self.ds = self.ds.cast_column("image", datasets.Image(decode=False))
        self.transform = transform
        self.indices = np.arange(len(data)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        idx = int(self.indices[i])
        row = self.ds[idx]
        try:
            image = self.transform(to_pil(row["image"]))
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for truncated / corrupt files
            name = row["image"].get("path") if isinstance(row["image"], dict) else idx
            return None, idx, f"{name}: {type(e).__name__}: {e}"
        except Image.DecompressionBombError as e:  # larger than twice PIL.Image.MAX_IMAGE_PIXELS
            name = row["image"].get("path") if isinstance(row["image"], dict) else idx
            return None, idx, (f"{name}: skipped, past Pillow's decompression-bomb limit ({e}); if the image is "
                               "trusted, raise PIL.Image.MAX_IMAGE_PIXELS before the run")
        return image, int(row["label"]), idx


def collate(batch):
    """Stack the readable examples; return the unreadable ones as (row, message) beside them."""
    good = [b for b in batch if b[0] is not None]
    bad = [(b[1], b[2]) for b in batch if b[0] is None]
    if not good:
        return None, None, None, bad
    images, labels, idx = zip(*good)
    return torch.stack(images), torch.tensor(labels), torch.tensor(idx), bad
