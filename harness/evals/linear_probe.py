"""The linear-probe suite: frozen features of each model -> harness.linear_probe -> accuracy rows.

A model with "with_reference": true is probed twice, as the library model and as the reference model
converted from it (same weights, same preprocessing), and the two are compared image by image.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pandas as pd

from .. import data, models
from ..data.catalog import dataset_means
from ..data.images import balanced_subset
from ..infra import predictions
from ..infra.suite import ConfigError, Context, Table
from ..methods import paired
from ..methods.features import extract, extraction_options
from ..methods.probe import linear_probe, sklearn_probe
from ..models import Model

PARALLEL = "data"  # under torchrun every rank extracts a shard of each model's features (harness.infra.distributed)
CPU_PROCESSES = True  # on a CPU: one-thread processes taking whole units are faster (run --processes)


def unit_cost(unit: str, config: dict) -> float:
    """A rough cost in seconds on one CPU core, for ordering units only (the runner starts long ones first): ~100 s
    per encoder of the default profile (extraction and probe), ~10 s for the data-scale models' small features."""
    spec = next((s for s in map(models.parse, config["models"]) if unit == f"probe:{s.id}"), None)
    if spec is None:
        return 0.0
    return 10.0 if spec.library == "data_scale" else 100.0 * (1 + spec.with_reference)


def validate(config: dict, ctx: Context) -> None:
    """Every data set known and its local files in a recognised layout, with a train and a test split; every model
    known, with weights that fit it (harness.data, harness.models)."""
    for spec in data.expand(config["datasets"]):
        if spec.source == "datacomp":
            raise ConfigError(f"linear_probe: {spec.name} is DataComp's zero-shot evaluation (test splits only, no "
                              "training split to fit a probe on): run it in the zero_shot suite")
        if data.task(spec) != "classification":
            raise ConfigError(f"linear_probe: {data.parse(spec).name} is a retrieval data set (no class labels)")
        data.check(spec, ["train", "test"])
    for spec in config["models"]:
        models.check(spec)


def units(config: dict, ctx: Context) -> list[str]:
    return [f"probe:{models.parse(m).id}" for m in config["models"]]


def _load_data(spec: data.DataSpec, seed: int):
    """The train and test splits, and the rows of each that are probed: `train_per_class` / `test_per_class` of
    every class (balanced, drawn with the seed) when the declaration asks for them, else all."""
    train, test = data.load(spec, "train"), data.load(spec, "test")
    per_class = spec.options
    train_idx = balanced_subset(train.labels, per_class["train_per_class"], seed) \
        if per_class.get("train_per_class") else None
    test_idx = balanced_subset(test.labels, per_class["test_per_class"], seed) \
        if per_class.get("test_per_class") else None
    return train, test, train_idx, test_idx


def _probe(encoder: Model, config: dict, ctx: Context, datasets, check_sklearn: bool = True):
    """(row, test predictions, (train features, test features)) of one encoder."""
    train, test, train_idx, test_idx = datasets
    cache = ctx.cache_dir if ctx.use_cache else None
    common = dict(model_id=encoder.id, weights=encoder.weights, device=ctx.device, cache_dir=cache,
                  **extraction_options(config))
    def log(phase: str, seconds: float) -> None:  # as each phase ends, in the unit's log (stderr)
        print(f"linear_probe {encoder.id} on {train.name}: {phase} {seconds:.1f} s", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    encoder.module.eval()
    ftr = extract(encoder.encode_image, train, encoder.transform, indices=train_idx, desc=f"{encoder.id} train",
                  **common)
    fte = extract(encoder.encode_image, test, encoder.transform, indices=test_idx, desc=f"{encoder.id} test",
                  **common)
    t1 = time.perf_counter()
    log("extraction", t1 - t0)
    res = linear_probe(ftr.features, ftr.labels, fte.features, fte.labels, num_classes=len(train.classnames),
                       seed=ctx.seed, device=ctx.device, val_fraction=config.get("val_fraction", 0.1),
                       sweep_max_images=config.get("sweep_max_images"), log=log)
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
        log("scikit-learn check", row["sklearn_seconds"])
    predictions.attach(row, fte.indices, fte.labels, res.ranked, res.margin)
    return row, res, (ftr.features, fte.features, fte.labels)


def run_unit(unit: str, config: dict, ctx: Context) -> list[dict]:
    model_id = unit.partition(":")[2]
    spec = next(s for s in map(models.parse, config["models"]) if s.id == model_id)
    encoder = models.resolve(spec, seed=ctx.seed, device=ctx.device, cache_dir=ctx.cache_dir)
    weights = spec.weights
    rows = []
    for d in map(data.parse, config["datasets"]):
        datasets = _load_data(d, ctx.seed)
        published = config.get("published", {}).get(d.name, {}).get(model_id, {})
        size = {"per_class": d.options["train_per_class"]} if d.options.get("train_per_class") else {}
        row, res, feats = _probe(encoder, config, ctx, datasets)
        rows.append({**row, "weights": weights, **size, **published})
        if spec.with_reference:
            # the reference's features equal the library's to round-off: the scikit-learn check is not run again
            ref_row, ref_res, ref_feats = _probe(models.reference(encoder), config, ctx, datasets,
                                                 check_sklearn=False)
            # the reference against the library model it was converted from, image by image
            ref_row.update(paired.agreement(res.predictions, ref_res.predictions, feats[2]))
            ref_row["feature_max_rel_diff"] = max(float(np.abs(r - f).max() / np.abs(f).max())
                                                  for r, f in zip(ref_feats[:2], feats[:2]))
            ref_row.update(paired.agreement_verdict(
                vars(res), vars(ref_res), ref_row["feature_max_rel_diff"], "feature_max_rel_diff",
                config.get("autocast")))
            rows.append({**ref_row, "weights": weights, **size, **published})
    return rows


def stages(read) -> list[tuple[str, float]]:
    """(stage, seconds) of a run, from its own table: feature extraction, the probes, the scikit-learn check."""
    lp = read("linear_probe")
    if lp is None:
        return []
    lp = lp[lp["dataset"] != "mean"] if "dataset" in lp else lp
    return [(label, float(lp[column].sum())) for column, label in (
        ("extract_seconds", "feature extraction"), ("probe_seconds", "probe (λ sweep + fit)"),
        ("sklearn_seconds", "scikit-learn check")) if column in lp]


def tables(rows: list[dict], config: dict) -> list[Table]:
    df = pd.DataFrame(rows)
    if "published_top1" in df:
        df["diff_vs_published"] = df["top1"] - df["published_top1"]
    df = pd.concat([df, dataset_means(df.assign(task="classification"))], ignore_index=True)
    cols = ["model", "library", "weights", "dataset", "train_images", "test_images", "top1", "top1_ci_low",
            "top1_ci_high", "top5", "mean_per_class_recall", "strength", "sklearn_top1", "sklearn_diff",
            "prediction_agreement", "predictions_differ", "mcnemar_p", "feature_max_rel_diff",
            "flips_beyond_round_off", "passed", "published_top1",
            "diff_vs_published", "published_source", "skipped_images", "extract_seconds", "probe_seconds"]
    names = ", ".join(data.parse(d).name for d in config["datasets"])
    notes = (f"Linear probe (CLIP paper protocol: L2-regularised logistic regression, L-BFGS, λ chosen on a "
             f"{config.get('val_fraction', 0.1):.0%} validation split of train) on frozen features of "
             f"{names}. `sklearn_top1`: scikit-learn's LogisticRegression(solver='lbfgs') on the same "
             "features with the same λ. `prediction_agreement`: fraction of test images on which the reference "
             "model and the library model it was converted from predict the same class; it is 1 when the two "
             "feature sets (equal to round-off: `feature_max_rel_diff`, the largest difference over the largest "
             "feature) lead the probe to the same strength and the same optimum (the final fit converges in "
             "float64 from zero), and an image could differ only where it lies on a decision boundary to within that "
             "round-off — on another CPU or thread count too; `predictions_differ` counts those images and "
             "`mcnemar_p` is McNemar's exact test on the two models' correctness (1 when none differ). `passed` (the "
             "verdict: `run` exits 1 when it is False): feature_max_rel_diff within float32's tolerance, 1e-5, and "
             "no differing prediction where the library's margin exceeds 2e-5 of the image's largest |logit| "
             "(`flips_beyond_round_off` counts those: a wrong conversion, not round-off). Each row's "
             "per-image predictions are in its `predictions` file. The scikit-learn check runs on the library's "
             "features only. "
             + config.get("notes", ""))
    return [Table("linear_probe", df, f"Linear probe on {names}",
                  "linear-probe accuracy of timm, open_clip and reference models on frozen features",
                  [c for c in cols if c in df], notes)]
