"""harness.data.catalog: every data set loaded offline from a small copy written here in the hub's own layout (parquet
files named like the hub's, the same columns and features), and the suites' rows per data set and their mean."""

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from harness.data import catalog
from harness.evals import linear_probe as lp_eval
from harness.evals import zero_shot as zs_eval
from harness.infra.suite import ConfigError, Context
from harness.models.open_clip import create as load_open_clip

CLASSIFICATION = [n for n, s in catalog.CATALOG.items()
                  if s.task == "classification" and n not in ("imagenet", "fashion_mnist")]
RETRIEVAL = [n for n, s in catalog.CATALOG.items() if s.task == "retrieval"]


def write_copy(root, name, per_class=2, size=24):
    """A few real-looking rows of data set `name` in the hub's parquet layout (plain_text/<split>-00000-of-00001)."""
    s = catalog.entry(name)
    rng = np.random.default_rng(0)
    n_classes = len(s.classnames) if s.classnames else 3
    if s.task == "retrieval":
        features = {s.image_column: datasets.Image(), s.captions_column: datasets.Sequence(datasets.Value("string"))}
        if s.filter:
            features[s.filter[0]] = datasets.Value("string")
    else:
        names = list(s.classnames) if s.classnames else [f"class_{i}_name" for i in range(n_classes)]
        features = {s.image_column: datasets.Image(), s.label_column: datasets.ClassLabel(names=names)}
    for split in s.splits.values():
        rows = {k: [] for k in features}
        for i in range((per_class * n_classes) if s.task == "classification" else 4):
            rows[s.image_column].append(Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)))
            if s.task == "retrieval":
                rows[s.captions_column].append([f"image {i}, caption {j}." for j in range(2)])
                if s.filter:
                    rows[s.filter[0]].append("test" if i < 3 else "train")
            else:
                rows[s.label_column].append(i % n_classes)
        folder = root / "plain_text"
        folder.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(rows, features=datasets.Features(features)).to_parquet(
            folder / f"{split}-00000-of-00001.parquet")
    return root


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classification_set_loads_from_a_local_copy(name, tmp_path):
    write_copy(tmp_path / name, name)
    s = catalog.entry(name)
    for role in s.splits:
        data = catalog.load(name, role, tmp_path / name)
        n_classes = len(s.classnames) if s.classnames else 3
        assert len(data) == 2 * n_classes and data.split == role
        assert data.classnames == (list(s.classnames) if s.classnames else
                                   [f"class {i} name" for i in range(n_classes)])  # "_" read as " "
        assert set(data.dataset.column_names) >= {"image", "label"} and data.labels.max() == n_classes - 1
    assert s.templates and all("{}" in t for t in catalog.templates(s))


@pytest.mark.parametrize("name", RETRIEVAL)
def test_retrieval_set_loads_from_a_local_copy(name, tmp_path):
    write_copy(tmp_path / name, name)
    r = catalog.load_retrieval(name, tmp_path / name)
    kept = 3 if catalog.entry(name).filter else 4  # Flickr30k: the rows of its test split only
    assert len(r.data) == kept and len(r.captions) == 2 * kept
    assert r.caption_image == [i for i in range(kept) for _ in range(2)]


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
    assert ret["images"] == 3 and ret["captions"] == 6 and 0 <= ret["image_to_text_R@1"] <= 100
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
    assert [r["train_images"] for r in rows] == [12, 40] and all(0 <= r["top1"] <= 100 for r in rows)
    table = lp_eval.tables(rows, config)[0].df
    assert table.iloc[-1]["dataset"] == "mean" and table.iloc[-1]["top1"] == pytest.approx(
        np.mean([r["top1"] for r in rows]))
