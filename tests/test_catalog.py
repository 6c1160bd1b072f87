"""harness.data.catalog: every data set loaded offline from a small copy written here in the layout the hub publishes
(its files, columns, feature types and class-name strings, from the sources cited, not from the catalog), and the
suites' rows per data set and their mean."""

import dataclasses

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import harness.data as harness_data
from harness.data import catalog, fashion_mnist
from harness.data.fashion_mnist import FASHION_MNIST_CLASSES
from harness.evals import linear_probe as lp_eval
from harness.evals import zero_shot as zs_eval
from harness.infra.suite import ConfigError, Context
from harness.models.open_clip import create as load_open_clip

# The layouts as the hub publishes them, written from the sources below and not from harness.data.catalog: a wrong
# entry (files, columns, class names) fails here. Each: {split: file paths in the repository}, {column: feature}.
CIFAR100_FINE = (  # uoft-cs/cifar100 README.md, fine_label's names as published ("cra" at 26)
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle "
    "caterpillar cattle chair chimpanzee clock cloud cockroach couch cra crocodile cup dinosaur dolphin elephant "
    "flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man "
    "maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train "
    "trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
FASHION_HUB = ["T - shirt / top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]  # zalando-datasets/fashion_mnist README.md
IMG = datasets.Image()


def _names(n, stem="class"):
    return datasets.ClassLabel(names=[f"{stem}_{i}" for i in range(n)])


def _one(folder, *splits):
    return {s: [f"{folder}/{s}-00000-of-00001.parquet"] for s in splits}


PUBLISHED = {
    "cifar10": (_one("plain_text", "train", "test"), {"img": IMG, "label": datasets.ClassLabel(names=[
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"])}),
    "cifar100": (_one("cifar100", "train", "test"), {"img": IMG, "fine_label": datasets.ClassLabel(
        names=CIFAR100_FINE), "coarse_label": _names(20, "superclass")}),
    "food101": ({"train": ["data/train-00000-of-00008.parquet", "data/train-00001-of-00008.parquet"],
                 "validation": ["data/validation-00000-of-00003.parquet"]},
                {"image": IMG, "label": _names(101, "dish")}),
    "pets": (_one("data", "train", "test"), {"image": IMG, "label": _names(37, "breed")}),
    "flowers102": ({"train": ["data/train-00000-of-00001.parquet"],
                    "validation": ["data/validation-00000-of-00001.parquet"],
                    "test": ["data/test-00000-of-00006.parquet", "data/test-00001-of-00006.parquet"]},
                   {"image": IMG, "label": datasets.Value("int64")}),  # labels as integers: the declared names count
    "stl10": (_one("data", "train", "test"), {"image": IMG, "label": datasets.ClassLabel(names=[
        "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"])}),
    "dtd": (_one("data", "train", "test"), {"image": IMG, "label": _names(47, "texture")}),
    "eurosat": (_one("data", "train", "test", "contrast"), {"image": IMG, "label": _names(10, "land")}),
    "mnist": (_one("mnist", "train", "test"), {"image": IMG, "label": datasets.ClassLabel(
        names=[str(d) for d in range(10)])}),
    "fashion_mnist": (_one("fashion_mnist", "train", "test"), {"image": IMG, "label": datasets.ClassLabel(
        names=FASHION_HUB)}),
    # nlphuji's loading scripts' features, as their parquet export (refs/convert/parquet, config TEST) serves them
    "flickr30k": ({"test": ["TEST/test/0000.parquet"]}, {
        "image": IMG, "caption": datasets.Sequence(datasets.Value("string")),
        "sentids": datasets.Sequence(datasets.Value("string")), "split": datasets.Value("string"),
        "img_id": datasets.Value("string"), "filename": datasets.Value("string")}),
    "mscoco": ({"test": ["TEST/test/0000.parquet"]}, {"image": IMG, "caption": datasets.Sequence(
        datasets.Value("string"))}),
}
CLASSIFICATION = [n for n in PUBLISHED if n not in ("flickr30k", "mscoco")]
RETRIEVAL = ["flickr30k", "mscoco"]


def _classes(feature):
    return feature.num_classes if isinstance(feature, datasets.ClassLabel) else 102  # flowers: its 102 names


def write_published(root, name, per_class=2, size=24, rows_per_file=None):
    """Small files of data set `name` where the hub serves them, with its columns and feature types."""
    files, features = PUBLISHED[name]
    rng = np.random.default_rng(0)
    label = next((c for c, f in features.items() if c.endswith("label") and c != "coarse_label"), None)
    for split, paths in files.items():
        for k, rel in enumerate(paths):
            n = rows_per_file or (per_class * _classes(features[label]) if label else 8)
            rows = {c: [] for c in features}
            for i in range(n):
                for c, f in features.items():
                    if isinstance(f, datasets.Image):
                        v = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
                    elif c == label:
                        v = (i + k) % _classes(f)
                    elif isinstance(f, datasets.ClassLabel):
                        v = i % f.num_classes
                    elif c == "caption":
                        v = [f"{split} image {k}.{i}, caption {j}." for j in range(5)]
                    elif c == "sentids":
                        v = [str(5 * i + j) for j in range(5)]
                    elif c == "split":  # Flickr30k's Karpathy split of each image: 3 of 8 rows are "test"
                        v = ["test", "train", "val", "train", "test", "train", "test", "train"][i % 8]
                    else:
                        v = f"{i}.jpg"
                    rows[c].append(v)
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_dict(rows, features=datasets.Features(features)).to_parquet(path)
    return root


def write_copy(root, name, per_class=2, size=24):
    """A copy of data set `name` in its published layout (the suites' tests use it)."""
    return write_published(root, name, per_class=per_class, size=size)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classification_set_loads_from_its_published_layout(name, tmp_path):
    write_published(tmp_path / name, name)
    s = catalog.entry(name)
    files, features = PUBLISHED[name]
    label = [f for c, f in features.items() if c.endswith("label") and c != "coarse_label"][0]
    n_classes = _classes(label)
    for role, split in s.splits.items():
        data = catalog.load(name, role, tmp_path / name)
        assert len(data) == 2 * n_classes * len(files[split]) and data.split == role
        assert len(data.classnames) == n_classes and data.labels.max() == n_classes - 1
        assert set(data.dataset.column_names) >= {"image", "label"}
        if s.classnames:
            assert data.classnames == list(s.classnames)
        else:  # the hub's own strings, "_" read as " "
            assert data.classnames[:2] == [n.replace("_", " ") for n in label.names[:2]]
    assert s.templates and all("{}" in t for t in catalog.templates(s))
    assert s.source.startswith(s.hub_id)  # the layout's source names the repository it was checked against


def test_the_four_names_that_were_wrong(tmp_path):
    write_published(tmp_path / "cifar100", "cifar100", per_class=1)
    names = catalog.load("cifar100", "test", tmp_path / "cifar100").classnames
    assert names[26] == "crab" and names[39] == "keyboard" and names[1] == "aquarium fish"
    assert "a photo of a crab." in [t.format(names[26]) for t in catalog.templates(catalog.entry("cifar100"))]
    write_published(tmp_path / "fm", "fashion_mnist", per_class=1)
    hub = catalog.load("fashion_mnist", "test", tmp_path / "fm").classnames
    assert hub == FASHION_MNIST_CLASSES and hub[0] == "T-shirt/top"  # the Debian files' names, one set everywhere
    assert fashion_mnist.same_names(FASHION_HUB) and not fashion_mnist.same_names(FASHION_HUB[::-1])


def test_a_wrong_declaration_fails_against_the_published_layout(tmp_path, monkeypatch):
    """The planted errors these tests exist to catch: a wrong config folder, a wrong label column."""
    write_published(tmp_path / "cifar100", "cifar100", per_class=1)
    right = catalog.CATALOG["cifar100"]
    monkeypatch.setitem(catalog.CATALOG, "cifar100", dataclasses.replace(right, files={
        "train": "plain_text/train-*.parquet", "test": "plain_text/test-*.parquet"}))
    with pytest.raises(ConfigError, match="cifar100/plain_text/test-\\*.parquet.*ImageFolder"):
        catalog.load("cifar100", "test", tmp_path / "cifar100")
    monkeypatch.setitem(catalog.CATALOG, "cifar100", dataclasses.replace(right, label_column="label"))
    with pytest.raises(ValueError, match="no column 'label'"):
        catalog.load("cifar100", "test", tmp_path / "cifar100")


def test_imagefolder_copy_and_an_unrecognised_layout(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("airplane", "bird"):
            (tmp_path / "if" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "if" / split / c / f"{i}.png")
    d = catalog.load("stl10", "test", tmp_path / "if")
    assert len(d) == 6 and d.classnames == ["airplane", "bird"] and sorted(d.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    # parquet files not where the hub serves them: refused, naming both layouts, never guessed
    (tmp_path / "odd").mkdir()
    datasets.Dataset.from_dict({"image": [], "label": []}).to_parquet(tmp_path / "odd" / "cifar10_test.parquet")
    with pytest.raises(ConfigError, match="no layout.*odd/plain_text/test-\\*.parquet.*uoft-cs/cifar10.*"
                                          "ImageFolder .*odd/test/<class>/<image>"):
        catalog.load("cifar10", "test", tmp_path / "odd")
    with pytest.raises(ConfigError, match="no layout"):
        harness_data.check({"name": "cifar10", "root": str(tmp_path / "odd")}, ["test"])


@pytest.mark.parametrize("name", RETRIEVAL)
def test_retrieval_set_loads_from_its_parquet_export(name, tmp_path):
    write_published(tmp_path / name, name)
    r = catalog.load_retrieval(name, tmp_path / name)
    kept = 3 if name == "flickr30k" else 8  # Flickr30k: its Karpathy test rows (3 of 8 here)
    assert len(r.data) == kept and len(r.captions) == 5 * kept  # five captions each
    assert r.caption_image == [i for i in range(kept) for _ in range(5)]


def test_the_hub_path_names_files_and_asks_for_no_loading_script(monkeypatch):
    """What the hub path asks `datasets` for (recorded around the real load_dataset, which then fails offline):
    the parquet export's files at its revision — a loading script is never named."""
    calls = []
    real = datasets.load_dataset

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", recording)
    with pytest.raises(FileNotFoundError, match="nlphuji/flickr30k, revision refs/convert/parquet, files "
                                                "TEST/test/\\*.parquet") as e:
        catalog.load_retrieval("flickr30k")
    assert "no longer supported" not in str(e.value)
    (args, kwargs), = calls
    assert args == ("nlphuji/flickr30k",) and kwargs["revision"] == "refs/convert/parquet"
    assert kwargs["data_files"] == {"test": "TEST/test/*.parquet"}


def test_hub_path_offline_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="uoft-cs/cifar10.*HF_DATASETS_OFFLINE=0.*local copy"):
        catalog.load("cifar10", "test")
    with pytest.raises(ConfigError, match="unknown data set 'cifar11' \\(did you mean cifar10"):
        catalog.entry("cifar11")


def test_catalog_covers_the_issue_list():
    assert {"cifar10", "cifar100", "food101", "pets", "flowers102", "stl10", "dtd", "eurosat", "mnist",
            "fashion_mnist", "imagenet", "flickr30k", "mscoco"} <= set(catalog.CATALOG)
    assert catalog.CATALOG["imagenet"].published["ViT-L-14/openai"] == 75.54
    assert len(catalog.templates(catalog.CATALOG["imagenet"])) == 80


def test_zero_shot_rows_per_data_set_and_the_mean(tmp_path):
    for name in ("cifar10", "mnist", "flickr30k"):
        write_copy(tmp_path / name, name, size=32)
    weights = tmp_path / "s32.pt"
    torch.save(load_open_clip("ViT-S-32", "random", seed=1, force_image_size=32).state_dict(), weights)
    config = {"datasets": [{"name": n, "root": str(tmp_path / n)} for n in ("cifar10", "mnist", "flickr30k")],
              "batch_size": 8,
              "models": [{"id": "s32", "model": "open_clip:ViT-S-32", "weights": str(weights),
                          "kwargs": {"force_image_size": 32}, "with_reference": True}]}
    ctx = Context(device=torch.device("cpu"), cache_dir=tmp_path / "cache")
    zs_eval.validate(config, ctx)
    rows = zs_eval.run_unit("eval:s32", config, ctx)
    df = pd.DataFrame(rows)
    assert df[["dataset", "library", "task"]].values.tolist() == [
        ["cifar10", "open_clip", "classification"], ["cifar10", "reference", "classification"],
        ["mnist", "open_clip", "classification"], ["mnist", "reference", "classification"],
        ["flickr30k", "open_clip", "retrieval"], ["flickr30k", "reference", "retrieval"]]
    assert (df.loc[df.library == "reference", "prediction_agreement"].dropna() == 1.0).all()
    ret = df[df.task == "retrieval"].iloc[0]
    assert ret["images"] == 3 and ret["captions"] == 15 and 0 <= ret["image_to_text_R@1"] <= 100
    assert ret["mean_R@1"] == pytest.approx((ret["image_to_text_R@1"] + ret["text_to_image_R@1"]) / 2)
    table = zs_eval.tables(rows, config)[0].df
    mean = table[table.dataset == "mean"]
    assert len(mean) == 2 and (mean.datasets == 2).all()  # the two classification sets, per library
    cls = table[(table.task == "classification") & (table.library == "open_clip")]
    assert mean[mean.library == "open_clip"].top1.item() == pytest.approx(cls.top1.mean())


def test_linear_probe_rows_per_data_set(tmp_path):
    for name in ("cifar10", "eurosat"):
        write_copy(tmp_path / name, name, per_class=4, size=16)
    config = {"datasets": [{"name": n, "root": str(tmp_path / n)} for n in ("cifar10", "eurosat")], "batch_size": 16,
              "val_fraction": 0.25,
              "models": [{"id": "vit", "model": "timm:vit_tiny_patch16_224",
                          "kwargs": {"img_size": 16, "patch_size": 8, "depth": 1},
                          "data_cfg": {"input_size": [3, 16, 16], "crop_pct": 1.0}}]}
    ctx = Context(device=torch.device("cpu"), cache_dir=tmp_path / "cache")
    rows = lp_eval.run_unit("probe:vit", config, ctx)
    assert [r["dataset"] for r in rows] == ["cifar10", "eurosat"]
    assert [r["train_images"] for r in rows] == [40, 40] and all(0 <= r["top1"] <= 100 for r in rows)
    table = lp_eval.tables(rows, config)[0].df
    assert table.iloc[-1]["dataset"] == "mean" and table.iloc[-1]["top1"] == pytest.approx(
        np.mean([r["top1"] for r in rows]))


def test_retrieval_rows_have_their_difference_to_the_published_mean_recall():
    """open_clip's table reports (image→text R@1 + text→image R@1) / 2 for Flickr30k and MSCOCO: the rows compare
    that mean; a classification row compares top-1."""
    rows = [{"model": "m", "library": "open_clip", "weights": "openai", "dataset": "flickr30k", "task": "retrieval",
             "image_to_text_R@1": 80.0, "text_to_image_R@1": 60.0, "mean_R@1": 70.0, "published_top1": 68.84},
            {"model": "m", "library": "open_clip", "weights": "openai", "dataset": "cifar10", "task": "classification",
             "top1": 90.0, "published_top1": 89.83}]
    df = zs_eval.tables(rows, {"models": ["open_clip:ViT-B-32/openai"]})[0].df
    assert df.diff_vs_published.tolist()[:2] == pytest.approx([70.0 - 68.84, 90.0 - 89.83])
    assert df.published_metric.tolist()[:2] == ["mean_R@1", "top1"]
    # the catalog's published values for retrieval are that mean: ViT-B-32/openai 78.8 and 58.8 on Flickr30k
    assert catalog.CATALOG["flickr30k"].published["ViT-B-32/openai"] == pytest.approx((78.8 + 58.8) / 2, abs=0.05)
