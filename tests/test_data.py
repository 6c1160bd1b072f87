"""The data layer on real data: Fashion-MNIST from Debian's package, and an ImageFolder written here."""

import numpy as np
import pytest
import torch
from PIL import Image

from harness import data
from harness.infra.suite import ConfigError
from harness.methods.features import extract


@pytest.fixture(scope="module")
def fmnist_test():
    return data.fashion_mnist.read("test")


def test_fashion_mnist_from_debian_package(fmnist_test):
    import datasets

    assert len(fmnist_test) == 10_000
    assert fmnist_test.classnames[7] == "Sneaker"
    assert isinstance(fmnist_test.dataset.features["label"], datasets.ClassLabel)
    assert np.bincount(fmnist_test.labels).tolist() == [1000] * 10
    image = data.images.to_pil(fmnist_test.dataset[0]["image"])
    assert image.size == (28, 28) and image.mode == "RGB"  # grayscale becomes 3 channels
    assert data.fashion_mnist.read("test").fingerprint == fmnist_test.fingerprint


def test_missing_fashion_mnist_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist.read("test", root=tmp_path)
    with pytest.raises(ValueError, match="splits 'train' and 'test'"):
        data.fashion_mnist.read("validation")


def test_balanced_subsets_are_nested_and_balanced(fmnist_test):
    small = data.images.balanced_subset(fmnist_test.labels, 10, seed=0)
    large = data.images.balanced_subset(fmnist_test.labels, 50, seed=0)
    assert np.bincount(fmnist_test.labels[small]).tolist() == [10] * 10
    assert set(small) <= set(large)
    with pytest.raises(ValueError, match="fewer than"):
        data.images.balanced_subset(fmnist_test.labels, 2000, seed=0)


def write_image_folder(root, classes=("n01440764", "n01443537", "n01484850"), per_class=4, corrupt=True):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{c}_{i}.png")
    if corrupt:
        (root / "val" / classes[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


def test_imagenet_from_a_local_image_folder(tmp_path):
    write_image_folder(tmp_path)
    train = data.imagenet.load("train", root=tmp_path)
    val = data.imagenet.load("validation", root=tmp_path)
    assert len(train) == 12 and len(val) == 13
    assert train.classnames == ["tench", "goldfish", "great white shark"]  # open_clip's names, by WordNet id
    assert train.fingerprint != val.fingerprint


def test_corrupt_image_is_skipped_and_counted(tmp_path):
    write_image_folder(tmp_path)
    val = data.imagenet.load("validation", root=tmp_path)
    transform = lambda im: torch.from_numpy(np.asarray(im.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)  # noqa: E731
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        feats = extract(lambda x: x.flatten(1), val, transform, model_id="pixels", weights="none", batch_size=4)
    assert len(feats.labels) == 12 and len(feats.skipped) == 1 and "broken.png" in feats.skipped[0]


def test_missing_imagenet_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.delenv(data.imagenet.IMAGENET_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="ImageFolder layout.*Hugging Face hub"):
        data.imagenet.load("validation")
    with pytest.raises(ConfigError, match="must hold train/ and val/"):
        data.imagenet.load("validation", root=tmp_path)


def test_decoded_tensors_skip_a_corrupt_image(tmp_path):
    write_image_folder(tmp_path)
    val = data.imagenet.load("validation", root=tmp_path)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        x, y, rows = data.images.decoded_tensors(val, np.arange(len(val)), size=8)
    assert x.shape == (12, 3, 8, 8) and len(y) == len(rows) == 12
    assert np.array_equal(val.labels[rows], y.numpy())  # each kept image with its own label


def test_a_blank_line_between_class_names_or_templates_is_refused_by_name(tmp_path):
    """Readers disagree on it (CLIP_benchmark 1.6 keeps an empty class, 1.4 drops it and every later class moves
    against its labels): the harness refuses it, naming the line; blank lines at the end are nothing."""
    from harness.data import texts
    from harness.infra.suite import ConfigError

    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n\n")
    assert texts.classnames(str(names), "x") == ["cat", "dog"]
    names.write_text("cat\n\ndog\n")
    with pytest.raises(ConfigError, match="line 2 is blank"):
        texts.classnames(str(names), "x")
    temps = tmp_path / "t.txt"
    temps.write_text("a photo of a {}.\n  \nitap of a {}.\n")
    with pytest.raises(ConfigError, match="line 2 is blank"):
        texts.templates(str(temps), "x")
