"""The zero-shot suite: CLIP zero-shot classification and retrieval.

Default profile: no pretrained CLIP is reachable, so a small reference CLIP is trained from scratch on
Fashion-MNIST images paired with captions (training templates, class names, measured attributes); it is
evaluated with templates held out from training, on retrieval over image–caption pairs of the test set,
and by a linear probe on its image tower; open_clip, given the same weights, must build the same
classifier and predict the same class for every image.
Full profile: pretrained open_clip models on ImageNet with open_clip's class names and OpenAI's 80
templates, beside open_clip's published top-1; the reference CLIP converted from each must agree.
"""

from __future__ import annotations

import pandas as pd

from .. import data, models, tasks
from ..convert.open_clip import to_open_clip
from ..data import catalog, datacomp
from ..data.images import GrayscaleTransform, balanced_subset
from ..infra import predictions
from ..infra.suite import Context, Table
from ..methods import task_metrics
from ..methods.clip_runs import attributes, caption, raw, tokenizer, trained_clip
from ..models.zero_shot import training as own_training

RECALL_KS = tasks.RECALL_KS
PARALLEL = "data"  # under torchrun every rank extracts a shard of the features (harness.infra.distributed)


def _own(spec: models.ModelSpec, config: dict) -> bool:
    """Whether `spec` names the CLIP this profile trains (config["train"]): "zero_shot:ID"."""
    return spec.library == "zero_shot" and bool(config.get("train")) and spec.name == config["train"]["id"]


def validate(config: dict, ctx: Context) -> None:
    """Every data set known and its local files in a recognised layout; every model known (harness.data,
    harness.models); whether a model is CLIP-like shows when it is loaded."""
    specs = [models.check(m, suite_config=ctx.suite_config) for m in config["models"]]
    if any(not _own(s, config) for s in specs):
        data.check_all(zero_shot_sets(config), ["test"])


CPU_PROCESSES = True  # on a CPU: its CLIP training runs as one unit beside the other suites' (run --processes)


def unit_cost(unit: str, config: dict) -> float:
    """A rough cost in seconds on one CPU core, for ordering units only (the runner starts long ones first): the
    CLIP's training steps at ~0.25 s each (measured 0.25 s on one core for the default profile's); evaluations
    last, after the training they read."""
    return 0.25 * config["train"]["recipe"]["steps"] if unit.startswith("train:") and config.get("train") else 0.0


def units(config: dict, ctx: Context) -> list[str]:
    """The profile's own CLIP (named "zero_shot:ID"): trained, then evaluated; any other model: evaluated."""
    out = []
    for spec in map(models.parse, config["models"]):
        out += [f"train:{spec.name}", f"eval:{spec.name}"] if _own(spec, config) else [f"eval:{spec.id}"]
    return out


# -------------------------------------------------------------------------------------------- evaluation
def _eval_default(config: dict, ctx: Context) -> list[dict]:
    """The profile's own CLIP: zero-shot with held-out and training templates, the linear probe on its image tower,
    retrieval over captioned test images, and open_clip carrying the same weights (its own classifier builder) as
    the twin whose verdict is judged (harness.tasks)."""
    import open_clip

    model, stats = trained_clip(config, ctx.device, ctx.cache_dir)
    spec, d = config["train"], config["data"]
    test = data.load(d["name"], d["split"])
    train_set = data.load(spec["data"]["name"], "train")
    names, held_out = config["classnames"], list(config["templates"])
    tok = tokenizer(spec["model"]["text"]["context_length"])
    opts = tasks.Options.of_suite(config, ctx)
    own = models.Model(models.ModelSpec("zero_shot", spec["id"], spec["id"]), "reference", model, model.encode_image,
                       GrayscaleTransform(channels=3), image_tower=model.visual, encode_text=model.encode_text,
                       tokenizer=tok)
    common = {"weights": f"trained ({spec['id']})", "dataset": d["name"], "temperature": stats["temperature"],
              "logit_scale": stats["logit_scale"], "train_images": stats["train_images"],
              # how the rows were made: trained here (the gate judges them by seed, or by image where a retraining
              # gave the same weights: harness.tools.diff)
              "training": own_training(config), "training_seed": int(spec["seed"]),
              "weights_hash": models.weights_hash(model), "classes_hash": tasks.classes_hash(names),
              "dtype": tasks.precision(own, opts)}
    base = {"model": spec["id"], "library": "reference"}

    test_idx = balanced_subset(test.labels, d["test_per_class"], seed=0)
    rows, done = [], {}
    for label, temps in (("held-out", held_out), ("training", spec["templates"])):
        c = done[label] = tasks.classify(own, test, test_idx, names, temps, opts, desc="test")
        rows.append(predictions.attach(
            {**base, "task": "classification", "templates": f"{label} ({len(temps)})", "images": len(c.feats.labels),
             **c.metrics, **common}, c.feats.indices, c.feats.labels, c.outputs["ranked"], c.outputs["margin"]))

    # the linear probe on the same image tower (its embeddings), beside zero-shot
    probe_idx = balanced_subset(train_set.labels, config["probe"]["train_per_class"], seed=0)
    res, ftr, fte = tasks.probe(own, train_set, test, probe_idx, test_idx, opts,
                                val_fraction=config["probe"]["val_fraction"])
    rows.append(predictions.attach(
        {**base, "task": "linear probe", "templates": "", "images": len(fte.labels), "top1": res.top1,
         "top5": res.top5, "mean_per_class_recall": res.mean_per_class_recall, "probe_train_images": len(ftr.labels),
         "strength": res.strength, "iterations": res.iterations, "converged": res.converged, **common},
        fte.indices, fte.labels, res.ranked, res.margin))

    # retrieval: the first retrieval_per_class test images of each class, one held-out-template caption each
    r_idx = balanced_subset(test.labels, d["retrieval_per_class"], seed=0)
    size, tone, _ = attributes(raw(test, r_idx), tuple(stats["attribute_thresholds"]))
    texts = [caption(held_out[j % len(held_out)], names[test.labels[i]], size[j], tone[j])
             for j, i in enumerate(r_idx)]
    rec = tasks.retrieval(own, test, texts, r_idx, opts, indices=r_idx, desc="retrieval", text_batch=len(texts))
    rows.append({**base, "task": "retrieval", "templates": f"held-out ({len(held_out)})", **rec,
                 "distinct_captions": len(set(texts)), **common})

    # open_clip with the same weights: the same classifier (open_clip's own builder) and the same predictions
    oc = to_open_clip(model)
    twin = models.Model(models.ModelSpec("zero_shot", spec["id"], f"{spec['id']} (open_clip)"), "open_clip", oc,
                        oc.encode_image, GrayscaleTransform(channels=3), image_tower=oc.visual,
                        encode_text=oc.encode_text, tokenizer=tok, weights_of=own)
    clf_oc = open_clip.build_zero_shot_classifier(oc, tok, names, held_out, device=ctx.device).cpu()
    ref, c = done["held-out"], tasks.classify(twin, test, test_idx, names, held_out, opts, clf=clf_oc,
                                              desc="test (open_clip)")
    gap = (ref.classifier - c.classifier).abs().max().item()
    drift = tasks.rel_diff(c.feats.features, ref.feats.features)
    rows.append(predictions.attach(
        {**base, "library": "open_clip", "task": "classification", "templates": f"held-out ({len(held_out)})",
         "images": len(c.feats.labels), **c.metrics, **common, "dtype": tasks.precision(twin, opts),
         "classifier_max_abs_diff": gap,
         "feature_max_rel_diff": drift,
         **tasks.verdict(ref.outputs, c.outputs, ref.feats.labels, max(gap, drift),
                         "classifier_max_abs_diff and feature_max_rel_diff", config.get("autocast"))},
        c.feats.indices, c.feats.labels, c.outputs["ranked"], c.outputs["margin"]))
    return rows


def zero_shot_sets(config: dict) -> list[data.DataSpec]:
    """The data sets a model is evaluated on: config["datasets"] (harness.data declarations: class names and
    templates their own, from files, or the catalog's), or else the default profile's own data set with its class
    names and held-out templates."""
    if config.get("datasets"):
        return data.expand(config["datasets"])
    d = config["data"]
    return [data.parse({"name": d["name"], "classnames": list(config["classnames"]),
                        "templates": list(config["templates"]), "test_per_class": d.get("test_per_class")})]


def identity(spec: models.ModelSpec, ds: data.DataSpec, config: dict, n_sets: int = 1) -> dict:
    """What every row of one model on one data set carries: model, weights, data set, the DataComp task and metric,
    the published number to compare with and its source."""
    entry = catalog.CATALOG.get(ds.name)
    dc = datacomp.task(ds.path) if ds.source == "datacomp" else None
    # a spec's own published_top1 (ImageNet's, or its one data set's) wins: a local weight file names no tag
    own = "published_top1" in spec.extra and (n_sets == 1 or ds.name == "imagenet")
    tag = f"{spec.name}/{spec.weights}"  # open_clip's table's name and pretrained columns: "ViT-B-32/openai"
    if dc:
        value = datacomp.PUBLISHED.get(tag, {}).get(dc.name)
        published = None if value is None else 100.0 * value
    else:
        published = spec.extra["published_top1"] if own else (entry.published.get(tag) if entry else None)
    source = datacomp.PUBLISHED_SOURCE if dc else config.get("published_source", catalog.OPENAI_SOURCE)
    return {"model": spec.id, "weights": spec.weights, "dataset": ds.name,
            **({"datacomp_task": dc.name, "datacomp_metric": dc.metric} if dc else {}),
            # the row of open_clip's table the DataComp aggregates are compared with (datacomp_means)
            **({"published_as": tag} if dc and tag in datacomp.PUBLISHED else {}),
            **({"published_top1": published, "published_source": source} if published is not None else {})}


def _eval_pretrained(spec: models.ModelSpec, config: dict, ctx: Context) -> list[dict]:
    """One CLIP-like model (and the reference converted from it) on each of the configured data sets."""
    encoder = models.resolve(spec, seed=ctx.seed, device=ctx.device, cache_dir=ctx.cache_dir,
                             suite_config=ctx.suite_config)
    if not encoder.clip_like:
        raise ValueError(f"{spec.string} is not CLIP-like (it needs encode_text and a tokenizer): zero-shot "
                         "classification needs a text tower; probe it with the linear_probe suite instead")
    encoders = [encoder] + ([models.reference(encoder)] if spec.with_reference else [])
    opts = tasks.Options.of_suite(config, ctx)
    sets = zero_shot_sets(config)
    return [row for ds in sets
            for row in tasks.zero_shot_rows(encoders, ds, opts, identity(spec, ds, config, len(sets)),
                                            check_open_clip=True, autocast=config.get("autocast"))]


def run_unit(unit: str, config: dict, ctx: Context) -> list[dict]:
    kind, _, model_id = unit.partition(":")
    train = config.get("train")
    if kind == "train":
        _, stats = trained_clip(config, ctx.device, ctx.cache_dir)
        return [{"model": model_id, "library": "reference", "task": "training", "weights": "trained (here)",
                 "dataset": train["data"]["name"], **{k: v for k, v in stats.items() if k != "attribute_thresholds"}}]
    spec = next(s for s in map(models.parse, config["models"]) if (s.name if _own(s, config) else s.id) == model_id)
    if _own(spec, config):
        return _eval_default(config, ctx)
    return _eval_pretrained(spec, config, ctx)


def stages(read) -> list[tuple[str, float]]:
    """(stage, seconds) of a run, from its own table: each unit (the CLIP's training, each evaluation)."""
    zs = read("zero_shot")
    if zs is None or "unit_seconds" not in zs:
        return []
    units = zs.drop_duplicates("unit")
    return [("training the CLIP" if str(u["unit"]).startswith("train") else f"unit {u['unit']}",
             float(u["unit_seconds"])) for _, u in units.iterrows()]


def datacomp_means(df: pd.DataFrame) -> pd.DataFrame:
    """DataComp's aggregates (aggregate_scores.py) per model and library over the DataComp tasks it was
    evaluated on: ImageNet, the group means and the unweighted average of the main metrics — each only when
    every task it needs is there (the average: all 38) — beside open_clip's published average."""
    if "datacomp_task" not in df or df["datacomp_task"].isna().all():
        return df.iloc[:0]
    out = []
    tasks = df[df["datacomp_task"].notna()]
    for (model, library), g in tasks.groupby(["model", "library"], sort=False):
        scores = dict(zip(g["datacomp_task"], g["main_metric"] / 100.0))
        agg = task_metrics.aggregate(scores, datacomp.GROUPS, len(datacomp.TASKS))
        weights = g["weights"].iloc[0] if "weights" in g else None
        # open_clip's table publishes the 38-task average and ImageNet 1k's number, no group means: the groups'
        # rows have no published number (none is derived from the per-task ones)
        tag = g["published_as"].dropna().iloc[0] if "published_as" in g and g["published_as"].notna().any() else None
        row_of_table = datacomp.PUBLISHED.get(tag, {})
        published = {"Average": row_of_table["Average"], "ImageNet": row_of_table["ImageNet 1k"]} if row_of_table \
            else {}
        for name, value in agg.items():
            needs = len(datacomp.TASKS) if name == "Average" else len(datacomp.GROUPS.get(name, ("ImageNet 1k",)))
            row = {"model": model, "library": library, "weights": weights, "task": "DataComp aggregate",
                   "dataset": f"datacomp: {name}", "main_metric": 100.0 * value, "datasets": len(scores),
                   "datacomp_metric": f"mean of {needs} task(s)" if name != "ImageNet" else "acc1"}
            ref = published.get(name)
            if ref is not None:
                row.update({"published_top1": 100.0 * ref, "published_metric": "main_metric",
                            "published_source": datacomp.PUBLISHED_SOURCE,
                            "diff_vs_published": 100.0 * (value - ref)})
            out.append(row)
    return pd.DataFrame(out)


def tables(rows: list[dict], config: dict) -> list[Table]:
    df = pd.DataFrame(rows)
    if "published_top1" in df:
        # what the published number measures: a DataComp task's main metric, the mean recall@1 of a retrieval
        # set (open_clip's table), else top-1
        measure = pd.Series("top1", index=df.index)
        if "mean_R@1" in df:
            measure[df["mean_R@1"].notna()] = "mean_R@1"
        if "datacomp_metric" in df:
            measure[df["datacomp_metric"].notna()] = "main_metric"
        df["published_metric"] = [(m if m != "main_metric" else dm) if p == p else float("nan") for m, dm, p in
                                  zip(measure, df.get("datacomp_metric", measure), df["published_top1"])]
        df["diff_vs_published"] = [df.at[i, m] - p if p == p and m in df else float("nan")
                                   for i, m, p in zip(df.index, measure, df["published_top1"])]
    df = pd.concat([df, catalog.dataset_means(df[df.get("datacomp_task", pd.Series(index=df.index)).isna()]),
                    datacomp_means(df)], ignore_index=True)
    for c in ("images", "captions", "distinct_captions", "train_images", "probe_train_images", "steps", "params",
              "skipped_images", "datasets"):
        if c in df:  # counts stay integers in the tables although other rows leave them empty
            df[c] = pd.Series([int(v) if v == v else float("nan") for v in df[c]], index=df.index, dtype=object)
    recall = [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in RECALL_KS]
    cols = ["model", "library", "weights", "dataset", "task", "templates", "images", "top1", "top5",
            "mean_per_class_recall", *recall, "mean_R@1", "chance_R@1", "datacomp_metric", "main_metric",
            "jaccard_all", "distinct_captions", "temperature", "classifier_max_abs_diff", "feature_max_rel_diff",
            "prediction_agreement", "predictions_differ", "mcnemar_p", "flips_beyond_round_off", "passed",
            "published_top1", "published_metric", "diff_vs_published", "datasets", "final_loss", "train_seconds"]
    if any(_own(models.parse(m), config) for m in config["models"]):
        t = config["train"]
        notes = (
            "**What the default profile measures: the whole zero-shot pipeline on self-trained weights, not a "
            "pretrained CLIP.** No pretrained CLIP is reachable offline, so a small reference CLIP "
            f"({t['model']['vision']['depth']}-block ViT image tower, patch {t['model']['vision']['patch_size']}, "
            f"{t['model']['text']['depth']}-block text tower, embedding {t['model']['embed_dim']}) is trained here "
            f"from scratch with harness.clip_loss and a learned temperature on {t['data']['per_class'] * 10:,} "
            "Fashion-MNIST training images, each paired with a caption drawn every step from "
            f"{len(t['templates'])} training templates, the class name and, with probability "
            f"{t['attribute_prob']}, each of two attributes measured on the image (small/large, dark/light). "
            f"Zero-shot classification uses {len(config['templates'])} templates held out from training (the "
            "training templates are shown as a second row) on class-balanced test images; retrieval pairs each "
            "of the test images in its pool with one held-out-template caption with its attributes — captions "
            "repeat across images (see distinct_captions), which bounds text-to-image recall well below 100. "
            "`linear probe`: harness.linear_probe on the same image tower's embeddings. `open_clip` row: the "
            "same weights in an open_clip CLIP; classifier_max_abs_diff compares open_clip's "
            "build_zero_shot_classifier with harness.zero_shot_classifier, prediction_agreement the predicted "
            "class image by image (predictions_differ: how many differ; mcnemar_p: McNemar's exact test on the "
            "two models' correctness); `passed` (the verdict: `run` exits 1 when it is False): the classifiers "
            "and the image features (feature_max_rel_diff) within float32's tolerance, 1e-5, and no "
            "differing prediction where the margin exceeds 2e-5 of the "
            "image's largest |logit| (flips_beyond_round_off: a wrong conversion, not round-off). The full profile "
            "measures pretrained open_clip weights on ImageNet validation with open_clip's 1,000 class names and "
            "OpenAI's 80 templates, beside open_clip's published top-1.")
    else:
        notes = ("Zero-shot ImageNet classification with open_clip's class names and OpenAI's 80 templates; "
                 "published_top1 from " + config.get("published_source", "") + ". The reference row is the "
                 "reference CLIP converted from the same weights (prediction_agreement: image by image; `passed`: "
                 "the classifiers and image features within float32's tolerance, 1e-5, and no prediction differing "
                 "where the margin exceeds 2e-5 of the image's largest |logit|).")
    if "datacomp_task" in df and df["datacomp_task"].notna().any():
        notes += (" DataComp's tasks (harness.data.datacomp): main_metric is each task's main metric as DataComp's "
                  "eval_utils compute it (tests/test_datacomp_parity.py runs CLIP_benchmark's and WILDS' own code on "
                  "the same inputs); the aggregates are aggregate_scores.py's, each only when every task it needs was "
                  "evaluated, beside open_clip's published 38-task average and ImageNet 1k number (the table "
                  "publishes no group means). Precision: the harness runs both towers in float32 (or the config's "
                  "autocast) on every device; on a GPU DataComp builds its text classifier, both retrieval towers and "
                  "WinoGAViL under float16 autocast (CLIP_benchmark's amp=True, torch.cuda.amp.autocast), so a GPU "
                  "run of DataComp's code differs from these rows by float16 round-off; on a CPU its autocast is off "
                  "and the two agree.")
    return [Table("zero_shot", df, "CLIP zero-shot classification and retrieval",
                  "CLIP zero-shot classification (held-out templates), retrieval recall@k, learned temperature, "
                  "linear probe beside it; open_clip on the same weights",
                  [c for c in cols if c in df], notes)]


def plan(config: dict, rates) -> list[dict]:
    """The full profile's stages at ImageNet's size (harness.tools.plan): each CLIP's features of the validation
    set, and the classifiers: 80 templates × 1,000 classes through each text tower (twice with a twin)."""
    specs = [models.parse(m) for m in config["models"]]
    n_text = rates.TEMPLATES * rates.CLASSES * sum(1 + s.with_reference for s in specs)
    return [*rates.features("zero_shot", config, rates.VAL, clip_only=True),
            {"stage": f"zero_shot: classifiers (80 templates × 1,000 classes, {len(specs)} models + twins)",
             "size": f"{n_text:,} texts", "rate": f"{rates.texts_per_s:.0f} texts/s CPU (ViT-B-32's text tower)",
             "cpu_seconds": n_text / rates.texts_per_s, "gpu_seconds": float("nan"), "gpu_x8_seconds": float("nan"),
             "disk_bytes": 0.0}]
