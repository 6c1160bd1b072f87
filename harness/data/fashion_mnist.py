"""Fashion-MNIST, the embedded default: 70,000 real 28×28 grayscale images of 10 classes, read from the IDX files
of Debian's `dataset-fashion-mnist` package (apt-get install dataset-fashion-mnist); when they are absent, the hub
copy `zalando-datasets/fashion_mnist` (online users only). The class names are the data set's own (its README).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from pathlib import Path

import numpy as np

from . import catalog
from .catalog import FASHION_MNIST_CLASSES
from .images import ImageData
from .source import Source

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def read(split: str, root: Path = FASHION_MNIST_DIR) -> ImageData:
    """Fashion-MNIST "train" (60,000) or "test" (10,000): 28×28 grayscale, 10 classes."""
    import datasets

    if split not in ("train", "test"):
        raise ValueError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}")
    prefix = "train" if split == "train" else "t10k"
    images_path, labels_path = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.exists() or not labels_path.exists():
        return _from_hub(split, root)
    pixels = _read_idx(images_path, 16).reshape(-1, 28, 28)
    labels = _read_idx(labels_path, 8)
    if len(pixels) != len(labels):
        raise ValueError(f"{images_path} holds {len(pixels)} images but {labels_path} {len(labels)} labels")
    from ..infra import inputs

    h = hashlib.sha256()
    with inputs.recording() as sources:
        for p in (images_path, labels_path):
            h.update(p.read_bytes())
            inputs.fingerprint(p)
    features = datasets.Features({"image": datasets.Array2D((28, 28), "uint8"),
                                  "label": datasets.ClassLabel(names=FASHION_MNIST_CLASSES)})
    ds = datasets.Dataset.from_dict({"image": pixels, "label": labels.astype(np.int64)}, features=features)
    return ImageData("fashion_mnist", split, ds.with_format("numpy"), FASHION_MNIST_CLASSES, h.hexdigest()[:16],
                     sources=sources)


def _from_hub(split: str, root: Path) -> ImageData:
    """The hub copy, through the catalog (its files, the Debian README's class names)."""
    try:
        data = catalog.load("fashion_mnist", split)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"Fashion-MNIST is not in {root} and the hub copy could not be loaded ({e}). "
            "Install the Debian package: apt-get install dataset-fashion-mnist"
        ) from e
    return data


def same_names(published: list[str]) -> bool:
    """True when class names as a source publishes them are Fashion-MNIST's, spacing aside: the hub's
    "T - shirt / top" is the README's "T-shirt/top"."""
    return [n.replace(" ", "") for n in published] == [n.replace(" ", "") for n in FASHION_MNIST_CLASSES]


@functools.cache
def load(split: str, root: Path = FASHION_MNIST_DIR) -> ImageData:
    """Fashion-MNIST is read from its files once per process (a few seconds) and shared by every suite."""
    return read(split, Path(root))


SOURCE = Source(lambda spec, role, names: load(role), templates=lambda spec: catalog.templates(
    catalog.entry("fashion_mnist")))
