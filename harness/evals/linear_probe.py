"""The linear-probe suite: frozen features of each model -> harness.linear_probe -> accuracy rows.

A model with "with_reference": true is probed twice, as the library model and as the reference model
converted from it (same weights, same preprocessing), and the two are compared image by image.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from .. import catalog
from .. import data as data_lib
from ..adapters import Encoder, load_encoder, reference
from ..features import extract, extraction_options
from ..linear_probe import linear_probe, sklearn_probe
from ..models import check_specs
from ..suite import Context, Table

PARALLEL = "data"  # under torchrun every rank extracts a shard of each model's features (harness.distributed)
CPU_PROCESSES = True  # on a CPU: one-thread processes taking whole units are faster (run --processes)


def unit_cost(unit: str, config: dict) -> float:
    """A rough cost in seconds on one CPU core, for ordering units only (the runner starts long ones first): ~100 s
    per encoder of the default profile (extraction and probe), ~10 s for the data-scale models' small features."""
    spec = next((m for m in config["models"] if unit == f"probe:{m['id']}"), {})
    return 10.0 if spec.get("library") == "data_scale" else 100.0 * (1 + bool(spec.get("with_reference")))


def validate(config: dict, ctx: Context) -> None:
    d = config["data"]
    for name in config.get("datasets") or []:
        catalog.spec(name)  # a known data set, or the closest names
    if not config.get("datasets") or "imagenet" in config["datasets"]:
        data_lib.check_source(d, [d["train_split"], d["test_split"]])
    check_specs(config["models"])


def units(config: dict, ctx: Context) -> list[str]:
    return [f"probe:{m['id']}" for m in config["models"]]


def probe_sets(config: dict) -> list[dict]:
    """The data sets to probe on: config["datasets"] (names from harness.catalog, each with the per-class subsets
    of config["data"]), or the one config["data"] declares."""
    d = config["data"]
    if config.get("datasets"):
        return [{**d, "name": n, "catalog": True,
                 "root": d.get("imagenet_dir") if n == "imagenet" else config.get("dataset_roots", {}).get(n)}
                for n in config["datasets"]]
    return [{**d, "catalog": False}]


def _load_data(d: dict, seed: int):
    if d["catalog"]:
        train, test = catalog.load(d["name"], "train", d["root"]), catalog.load(d["name"], "test", d["root"])
    else:
        kwargs = {"root": d["imagenet_dir"]} if d.get("imagenet_dir") else {}
        train = data_lib.load(d["name"], d["train_split"], **kwargs)
        test = data_lib.load(d["name"], d["test_split"], **kwargs)
    train_idx = (data_lib.balanced_subset(train.labels, d["train_per_class"], seed)
                 if d.get("train_per_class") else None)
    test_idx = data_lib.balanced_subset(test.labels, d["test_per_class"], seed) if d.get("test_per_class") else None
    return train, test, train_idx, test_idx


def _probe(encoder: Encoder, config: dict, ctx: Context, datasets, check_sklearn: bool = True):
    """(row, test predictions, (train features, test features)) of one encoder."""
    train, test, train_idx, test_idx = datasets
    cache = ctx.cache_dir if ctx.use_cache else None
    common = dict(model_id=encoder.id, weights=encoder.weights, device=ctx.device, cache_dir=cache,
                  **extraction_options(config))
    t0 = time.perf_counter()
    encoder.module.eval()
    ftr = extract(encoder.encode, train, encoder.transform, indices=train_idx, desc=f"{encoder.id} train", **common)
    fte = extract(encoder.encode, test, encoder.transform, indices=test_idx, desc=f"{encoder.id} test", **common)
    t1 = time.perf_counter()
    res = linear_probe(ftr.features, ftr.labels, fte.features, fte.labels, num_classes=len(train.classnames),
                       seed=ctx.seed, device=ctx.device, val_fraction=config.get("val_fraction", 0.1),
                       sweep_max_images=config.get("sweep_max_images"))
    t2 = time.perf_counter()
    row = {
        "model": encoder.id, "library": encoder.library, "dataset": train.name,
        "train_images": len(ftr.labels), "test_images": len(fte.labels), "feature_dim": ftr.features.shape[1],
        "top1": res.top1, "top1_ci_low": res.top1_ci[0], "top1_ci_high": res.top1_ci[1], "top5": res.top5,
        "mean_per_class_recall": res.mean_per_class_recall, "strength": res.strength, "iterations": res.iterations,
        "skipped_images": len(ftr.skipped) + len(fte.skipped),
        "feature_chunks_reused": ftr.from_cache + fte.from_cache,
        "feature_chunks_computed": ftr.computed + fte.computed,
        "extract_seconds": t1 - t0, "probe_seconds": t2 - t1, "weights_hash": encoder.weights,
    }
    if check_sklearn:
        sk_top1, _ = sklearn_probe(ftr.features, ftr.labels, fte.features, fte.labels, res.strength)
        row.update(sklearn_top1=sk_top1, sklearn_diff=res.top1 - sk_top1, sklearn_seconds=time.perf_counter() - t2)
    return row, res.predictions, (ftr.features, fte.features)


def run_unit(unit: str, config: dict, ctx: Context) -> list[dict]:
    model_id = unit.partition(":")[2]
    spec = next(m for m in config["models"] if m["id"] == model_id)
    encoder = load_encoder(spec, seed=ctx.seed, device=ctx.device, cache_dir=ctx.cache_dir)
    weights = spec.get("weights", "random") if spec["library"] != "data_scale" else f"trained ({spec['unit']})"
    rows = []
    for d in probe_sets(config):
        datasets = _load_data(d, ctx.seed)
        published = config.get("published", {}).get(model_id, {}) if d["name"] == config["data"]["name"] else {}
        row, pred, feats = _probe(encoder, config, ctx, datasets)
        rows.append({**row, "weights": weights, **published})
        if spec.get("with_reference"):
            # the reference's features equal the library's to round-off: the scikit-learn check is not run again
            ref_row, ref_pred, ref_feats = _probe(reference(encoder), config, ctx, datasets, check_sklearn=False)
            ref_row["prediction_agreement"] = float((ref_pred == pred).mean())
            ref_row["feature_max_rel_diff"] = max(float(np.abs(r - f).max() / np.abs(f).max())
                                                  for r, f in zip(ref_feats, feats))
            rows.append({**ref_row, "weights": weights, **published})
    return rows


def tables(rows: list[dict], config: dict) -> list[Table]:
    df = pd.DataFrame(rows)
    if "published_top1" in df:
        df["diff_vs_published"] = df["top1"] - df["published_top1"]
    df = pd.concat([df, catalog.dataset_means(df.assign(task="classification"))], ignore_index=True)
    cols = ["model", "library", "weights", "dataset", "train_images", "test_images", "top1", "top1_ci_low",
            "top1_ci_high", "top5", "mean_per_class_recall", "strength", "sklearn_top1", "sklearn_diff",
            "prediction_agreement", "feature_max_rel_diff", "published_top1", "diff_vs_published", "published_source",
            "skipped_images", "extract_seconds", "probe_seconds"]
    d = config["data"]
    notes = (f"Linear probe (CLIP paper protocol: L2-regularised logistic regression, L-BFGS, λ chosen on a "
             f"{config.get('val_fraction', 0.1):.0%} validation split of train) on frozen features of "
             f"{d['name']}. `sklearn_top1`: scikit-learn's LogisticRegression(solver='lbfgs') on the same "
             "features with the same λ. `prediction_agreement`: fraction of test images on which the reference "
             "model and the library model it was converted from predict the same class; it is 1 when the two "
             "feature sets (equal to round-off: `feature_max_rel_diff`, the largest difference over the largest "
             "feature) lead the probe to the same strength and the same optimum (the final fit converges in "
             "float64 from zero), and an image could differ only where it lies on a decision boundary to within that "
             "round-off — on another CPU or thread count too. The scikit-learn check runs on the library's "
             "features only. "
             + config.get("notes", ""))
    return [Table("linear_probe", df, f"Linear probe on {d['name']}",
                  "linear-probe accuracy of timm, open_clip and reference models on frozen features",
                  [c for c in cols if c in df], notes)]
