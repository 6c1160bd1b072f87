"""The linear-probe suite: frozen features of each model -> harness.linear_probe -> accuracy rows.

A model with "with_reference": true is probed twice, as the library model and as the reference model
converted from it (same weights, same preprocessing), and the two are compared image by image.
"""

from __future__ import annotations

import pandas as pd

from .. import data, models, tasks
from ..data.catalog import dataset_means
from ..infra.suite import ConfigError, Context, Table

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
        models.check(spec, suite_config=ctx.suite_config)


def units(config: dict, ctx: Context) -> list[str]:
    return [f"probe:{models.parse(m).id}" for m in config["models"]]


def run_unit(unit: str, config: dict, ctx: Context) -> list[dict]:
    model_id = unit.partition(":")[2]
    spec = next(s for s in map(models.parse, config["models"]) if s.id == model_id)
    encoder = models.resolve(spec, seed=ctx.seed, device=ctx.device, cache_dir=ctx.cache_dir,
                             suite_config=ctx.suite_config)
    encoders = [encoder] + ([models.reference(encoder)] if spec.with_reference else [])
    opts = tasks.Options.of_suite(config, ctx)
    rows = []
    for d in map(data.parse, config["datasets"]):
        published = config.get("published", {}).get(d.name, {}).get(model_id, {})
        size = {"per_class": d.options["train_per_class"]} if d.options.get("train_per_class") else {}
        for row in tasks.probe_rows(encoders, d, opts, {}, val_fraction=config.get("val_fraction", 0.1),
                                    sweep_max_images=config.get("sweep_max_images"), check_sklearn=True,
                                    autocast=config.get("autocast")):
            rows.append({**row, "weights_hash": encoder.weights, "weights": spec.weights, **size, **published})
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
            "top1_ci_high", "top5", "mean_per_class_recall", "strength", "iterations", "converged", "sklearn_top1",
            "sklearn_diff",
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
             "feature) lead the probe to the same strength and the same optimum (the final fit, from zero, stops "
             "in float64 when ‖∇f‖₂ ≤ 1e-7·max(1, f): `converged` says whether it did, "
             "`iterations` after how many L-BFGS iterations, float32 and float64 together), and an image could "
             "differ only where it lies on a decision boundary to within that "
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


def plan(config: dict, rates) -> list[dict]:
    """The full profile's stages at ImageNet's size (harness.tools.plan): each model's features of train and
    validation, and per model and twin the probe — a λ sweep (11 fits × ≤ 200 steps on `sweep_max_images`) and a
    final fit on all of train (measured on the default profile: ~430 steps, float32 then float64 at ~2× the cost
    per step)."""
    TRAIN, VAL, CLASSES = rates.TRAIN, rates.VAL, rates.CLASSES
    rows = rates.features("linear_probe", config, TRAIN + VAL, disk=True)
    sample = config.get("sweep_max_images") or TRAIN
    for declared in config["models"]:
        spec = models.parse(declared)
        t = rates.tower(spec)
        d, probes = int(t["feature_dim"]), 2 if spec.with_reference else 1
        seconds = probes * rates.ns_per_ndc * 1e-9 * d * CLASSES * (11 * 200 * sample + 430 * 1.5 * TRAIN)
        if t["cpu_images_per_s"] != t["cpu_images_per_s"]:  # --quick: a tower not measured, its dimension unknown
            seconds = float("nan")
        rows.append({"stage": f"linear_probe: probe of {spec.id}" + (" + reference" if probes == 2 else ""),
                     "size": f"{TRAIN:,} × {d:,} × {CLASSES:,}", "rate": f"{rates.ns_per_ndc:.3f} ns per N·D·C per "
                     "step (CPU, float32)", "cpu_seconds": seconds, "gpu_seconds": float("nan"),
                     "gpu_x8_seconds": float("nan"), "disk_bytes": 0.0})
    return rows
