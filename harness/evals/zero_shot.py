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

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import cache, catalog, checkpoints, distributed
from .. import data as data_lib
from ..adapters import load_encoder, reference
from ..convert.open_clip import to_open_clip
from ..features import extract, extraction_options, weights_hash
from ..linear_probe import linear_probe
from ..models import check_specs
from ..reference.clip import CLIP, CLIPConfig, CLIPTextConfig, clip_vision_config
from ..suite import Context, Table
from ..train import Recipe, train_clip
from ..zero_shot import classification_metrics, retrieval_recall, zero_shot_classifier

RECALL_KS = (1, 5, 10)
PARALLEL = "data"  # under torchrun every rank extracts a shard of the features (harness.distributed)


def validate(config: dict, ctx: Context) -> None:
    for name in config.get("datasets") or []:
        catalog.spec(name)  # a known data set, or the closest names
    if not config.get("datasets") or "imagenet" in config["datasets"]:
        data_lib.check_source(config["data"], [config["data"]["split"]])
    check_specs(config["models"])


CPU_PROCESSES = True  # on a CPU: its CLIP training runs as one unit beside the other suites' (run --processes)


def unit_cost(unit: str, config: dict) -> float:
    """A rough cost in seconds on one CPU core, for ordering units only (the runner starts long ones first): the
    CLIP's training steps at ~0.25 s each (measured 0.25 s on one core for the default profile's); evaluations
    last, after the training they read."""
    return 0.25 * config["train"]["recipe"]["steps"] if unit.startswith("train:") and config.get("train") else 0.0


def units(config: dict, ctx: Context) -> list[str]:
    out = [f"train:{config['train']['id']}", f"eval:{config['train']['id']}"] if config.get("train") else []
    return out + [f"eval:{m['id']}" for m in config["models"]]


def tokenizer(context_length: int = 77):
    """open_clip's bundled CLIP BPE tokenizer (no download), padding/truncating to context_length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def templates(config: dict) -> list[str]:
    if config["templates"] == "openai_imagenet":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return list(OPENAI_IMAGENET_TEMPLATES)
    return list(config["templates"])


# ---------------------------------------------------------------------------------------------- training
def _attributes(x: torch.Tensor, thresholds: tuple[float, float] | None = None):
    """Per image: inked area and mean ink (28×28 grayscale in [0, 1]); words by the training medians."""
    ink = x > 0.1
    area = ink.float().mean(dim=(1, 2))
    darkness = (x * ink).sum(dim=(1, 2)) / ink.sum(dim=(1, 2)).clamp(min=1)
    thresholds = thresholds or (area.median().item(), darkness.median().item())
    size = np.where(area.numpy() > thresholds[0], "large", "small")
    tone = np.where(darkness.numpy() > thresholds[1], "light", "dark")  # Fashion-MNIST ink is bright on black
    return size, tone, thresholds


def _raw(data: data_lib.ImageData, idx: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(data.pixels(idx).astype(np.float32) / 255.0)


def caption(template: str, classname: str, size: str = "", tone: str = "") -> str:
    words = " ".join(w for w in (size, tone, classname) if w)
    return template.format(words)


def build_clip(spec: dict) -> CLIP:
    m = spec["model"]
    return CLIP(CLIPConfig(embed_dim=m["embed_dim"], vision=clip_vision_config(num_classes=m["embed_dim"],
                                                                               **m["vision"]),
                           text=CLIPTextConfig(**m["text"])))


def checkpoint_path(cache_dir: Path, config: dict, device: torch.device | str) -> Path:
    """Where the trained CLIP is kept: by what it was trained on and with, and the kind of device."""
    return checkpoints.path(cache_dir, "zero_shot", {k: config[k] for k in ("classnames", "train")}, device)


def trained_clip(config: dict, ctx: Context) -> tuple[CLIP, dict]:
    """The default profile's CLIP: trained once (deterministic) and saved, then read from its checkpoint.
    Under torchrun rank 0 trains (or reads the checkpoint) and broadcasts the weights to the other ranks."""
    path = checkpoint_path(ctx.cache_dir, config, ctx.device)
    loaded = _train_once(config, ctx, path) if distributed.is_main() or not distributed.active() else None
    if distributed.active():
        state = distributed.broadcast(None if loaded is None else
                                      ({k: v.cpu() for k, v in loaded[0].state_dict().items()}, loaded[1]))
        model = build_clip(config["train"])
        model.load_state_dict(state[0])
        loaded = model.to(ctx.device).eval(), state[1]
    model, meta = loaded
    return model.to(ctx.device).eval(), meta["stats"]


def _train_once(config: dict, ctx: Context, path: Path) -> tuple[CLIP, dict]:
    """(model, meta) from the checkpoint at `path`, training and saving it first when there is none (or a damaged
    one). A second run sharing the cache waits for the first to finish training instead of training again."""
    with cache.lock(path, "training the zero-shot CLIP"):
        loaded = checkpoints.load_or_none(path, lambda meta: build_clip(meta["config"]), ctx.device)
        if loaded is None:
            _train(config, ctx, path)
            loaded = checkpoints.load(path, lambda meta: build_clip(meta["config"]), ctx.device)
    return loaded


def _train(config: dict, ctx: Context, path: Path) -> None:
    spec = config["train"]
    d = spec["data"]
    train_set = data_lib.load(d["name"], "train")
    idx = data_lib.balanced_subset(train_set.labels, d["per_class"], seed=d["subset_seed"])
    x, _ = data_lib.grayscale_tensors(train_set, idx, channels=3)
    labels = train_set.labels[idx]
    size, tone, thresholds = _attributes(_raw(train_set, idx))
    # every caption there can be, tokenised once: table[class, large?, light?, template, say size?, say tone?]
    tok = tokenizer(spec["model"]["text"]["context_length"])
    names, temps, p = config["classnames"], spec["templates"], spec["attribute_prob"]
    keys = [(c, a, b, t, s, u) for c in range(len(names)) for a in range(2) for b in range(2)
            for t in range(len(temps)) for s in range(2) for u in range(2)]
    table = tok([caption(temps[t], names[c], ("small", "large")[a] if s else "", ("dark", "light")[b] if u else "")
                 for c, a, b, t, s, u in keys]).reshape(len(names), 2, 2, len(temps), 2, 2, -1)
    label = torch.from_numpy(np.asarray(labels))
    large, light = torch.from_numpy(size == "large").long(), torch.from_numpy(tone == "light").long()

    def captions(batch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        t = torch.randint(0, len(temps), (len(batch),), generator=g)
        say_size = (torch.rand(len(batch), generator=g) < p).long()
        say_tone = (torch.rand(len(batch), generator=g) < p).long()
        return table[label[batch], large[batch], light[batch], t, say_size, say_tone]

    torch.manual_seed(spec["seed"])
    model = build_clip(spec).to(ctx.device)
    recipe = Recipe(label_smoothing=0.0, **spec["recipe"])
    stats = train_clip(model, x.to(ctx.device), captions, recipe, seed=spec["seed"], desc=f"train {spec['id']}")
    stats.update(train_images=len(idx), steps=recipe.steps, attribute_thresholds=list(thresholds),
                 params=sum(q.numel() for q in model.parameters()))
    checkpoints.save(path, model, {"stats": stats, "config": spec})


# -------------------------------------------------------------------------------------------- evaluation
def _features(encode, data, transform, idx, model_id: str, weights: str, config: dict, ctx: Context, desc: str):
    cache = ctx.cache_dir if ctx.use_cache else None
    return extract(encode, data, transform, indices=idx, model_id=model_id, weights=weights, device=ctx.device,
                   cache_dir=cache, desc=desc, **extraction_options(config))


def _eval_default(config: dict, ctx: Context) -> list[dict]:
    model, stats = trained_clip(config, ctx)
    spec, d = config["train"], config["data"]
    test = data_lib.load(d["name"], d["split"])
    train_set = data_lib.load(spec["data"]["name"], "train")
    names, held_out = config["classnames"], templates(config)
    tok = tokenizer(spec["model"]["text"]["context_length"])
    transform = data_lib.GrayscaleTransform(channels=3)
    weights = weights_hash(model)
    common = {"weights": f"trained ({spec['id']})", "dataset": d["name"], "temperature": stats["temperature"],
              "logit_scale": stats["logit_scale"], "train_images": stats["train_images"]}

    test_idx = data_lib.balanced_subset(test.labels, d["test_per_class"], seed=0)
    feats = _features(model.encode_image, test, transform, test_idx, spec["id"], weights, config, ctx, "test")
    image_features = torch.from_numpy(feats.features)
    rows, preds, classifiers = [], {}, {}
    for label, temps in (("held-out", held_out), ("training", spec["templates"])):
        classifiers[label] = zero_shot_classifier(model, tok, names, temps, device=ctx.device)
        m = classification_metrics(image_features, classifiers[label].cpu(), feats.labels)
        preds[label] = m.pop("predictions")
        rows.append({"model": spec["id"], "library": "reference", "task": "classification",
                     "templates": f"{label} ({len(temps)})", "images": len(feats.labels), **m, **common})

    # the linear probe on the same image tower (its embeddings), beside zero-shot
    probe_idx = data_lib.balanced_subset(train_set.labels, config["probe"]["train_per_class"], seed=0)
    ftr = _features(model.encode_image, train_set, transform, probe_idx, spec["id"], weights, config, ctx,
                    "probe train")
    res = linear_probe(ftr.features, ftr.labels, feats.features, feats.labels, num_classes=len(names),
                       seed=ctx.seed, device=ctx.device, val_fraction=config["probe"]["val_fraction"])
    rows.append({"model": spec["id"], "library": "reference", "task": "linear probe", "templates": "",
                 "images": len(feats.labels), "top1": res.top1, "top5": res.top5,
                 "mean_per_class_recall": res.mean_per_class_recall, "probe_train_images": len(ftr.labels),
                 **common})

    # retrieval: the first retrieval_per_class test images of each class, one held-out-template caption each
    r_idx = data_lib.balanced_subset(test.labels, d["retrieval_per_class"], seed=0)
    size, tone, _ = _attributes(_raw(test, r_idx), tuple(stats["attribute_thresholds"]))
    texts = [caption(held_out[j % len(held_out)], names[test.labels[i]], size[j], tone[j])
             for j, i in enumerate(r_idx)]
    with torch.no_grad():
        text_features = model.encode_text(tok(texts).to(ctx.device)).cpu()
    rf = _features(model.encode_image, test, transform, r_idx, spec["id"], weights, config, ctx, "retrieval")
    rec = retrieval_recall(torch.from_numpy(rf.features), text_features, np.arange(len(r_idx)), RECALL_KS)
    rows.append({"model": spec["id"], "library": "reference", "task": "retrieval",
                 "templates": f"held-out ({len(held_out)})", "images": len(r_idx), "captions": len(texts),
                 "distinct_captions": len(set(texts)), **rec,
                 **{f"chance_R@{k}": 100.0 * k / len(r_idx) for k in RECALL_KS}, **common})

    # open_clip with the same weights: the same classifier (open_clip's own builder) and the same predictions
    oc = to_open_clip(model)
    import open_clip

    clf_ref = classifiers["held-out"]
    clf_oc = open_clip.build_zero_shot_classifier(oc, tok, names, held_out, device=ctx.device)
    oc_feats = _features(oc.encode_image, test, transform, test_idx, f"{spec['id']} (open_clip)", weights,
                         config, ctx, "test (open_clip)")
    m = classification_metrics(torch.from_numpy(oc_feats.features), clf_oc.cpu(), oc_feats.labels)
    pred = m.pop("predictions")
    rows.append({"model": spec["id"], "library": "open_clip", "task": "classification",
                 "templates": f"held-out ({len(held_out)})", "images": len(oc_feats.labels), **m, **common,
                 "classifier_max_abs_diff": (clf_ref - clf_oc).abs().max().item(),
                 "prediction_agreement": float((pred == preds["held-out"]).mean())})
    return rows


def zero_shot_sets(config: dict) -> list[dict]:
    """The data sets a pretrained model is evaluated on: config["datasets"] (names from harness.catalog), or the
    one declared by config["data"] / "classnames" / "templates" (ImageNet by default)."""
    d = config["data"]
    if config.get("datasets"):
        return [{"name": n, "root": d.get("imagenet_dir") if n == "imagenet" else
                 config.get("dataset_roots", {}).get(n), "test_per_class": d.get("test_per_class")}
                for n in config["datasets"]]
    return [{"name": d["name"], "root": d.get("imagenet_dir"), "split": d["split"],
             "test_per_class": d.get("test_per_class"), "classnames": config["classnames"],
             "templates": config["templates"]}]


def _eval_pretrained(spec: dict, config: dict, ctx: Context) -> list[dict]:
    """One open_clip model (and the reference converted from it) on each of the configured data sets."""
    import open_clip

    encoder = load_encoder(spec, seed=ctx.seed, device=ctx.device, cache_dir=ctx.cache_dir)
    tok = open_clip.get_tokenizer(spec["name"])
    encoders = [encoder] + ([reference(encoder)] if spec.get("with_reference") else [])
    rows = []
    for ds in zero_shot_sets(config):
        entry = catalog.CATALOG.get(ds["name"])
        # a spec's own published_top1 (ImageNet's, or its one data set's) wins: a local weight file names no tag
        own = "published_top1" in spec and ("classnames" in ds or ds["name"] == "imagenet")
        published = spec["published_top1"] if own else \
            (entry.published.get(f"{spec['name']}/{spec.get('weights', 'random')}") if entry else None)
        common = {"model": spec["id"], "weights": spec.get("weights", "random"), "dataset": ds["name"],
                  **({"published_top1": published, "published_source": config.get("published_source",
                                                                                   catalog.OPENAI_SOURCE)}
                     if published is not None else {})}
        if entry is not None and entry.task == "retrieval":
            rows += _retrieval_rows(encoders, tok, ds, config, ctx, common)
        else:
            rows += _classification_rows(encoders, encoder, tok, ds, config, ctx, common)
    return rows


def _classification_rows(encoders, encoder, tok, ds: dict, config: dict, ctx: Context, common: dict) -> list[dict]:
    import open_clip

    if "classnames" in ds:  # declared in the suite config
        data = data_lib.load(ds["name"], ds["split"], **({"root": ds["root"]} if ds["root"] else {}))
        names = data.classnames if ds["classnames"] == "imagenet" else ds["classnames"]
        temps = templates({"templates": ds["templates"]})
        label = ds["templates"] if isinstance(ds["templates"], str) else "config"
    else:
        data = catalog.load(ds["name"], "test", ds["root"])
        names, temps, label = data.classnames, catalog.templates(catalog.spec(ds["name"])), "catalog"
    idx = data_lib.balanced_subset(data.labels, ds["test_per_class"], seed=0) if ds.get("test_per_class") else None
    rows, preds, classifiers = [], {}, {}
    for enc in encoders:
        t0 = time.perf_counter()
        clf = zero_shot_classifier(enc.module, tok, names, temps, device=ctx.device)
        feats = _features(enc.encode, data, enc.transform, idx, enc.id, enc.weights, config, ctx, enc.id)
        m = classification_metrics(torch.from_numpy(feats.features), clf.cpu(), feats.labels)
        preds[enc.library], classifiers[enc.library] = m.pop("predictions"), clf
        rows.append({**common, "library": enc.library, "task": "classification",
                     "templates": f"{label} ({len(temps)})", "images": len(feats.labels), **m,
                     "skipped_images": len(feats.skipped), "seconds": time.perf_counter() - t0})
    rows[0]["classifier_max_abs_diff"] = (classifiers["open_clip"] - open_clip.build_zero_shot_classifier(
        encoder.module, tok, names, temps, device=ctx.device)).abs().max().item()
    if len(rows) == 2:
        rows[1]["classifier_max_abs_diff"] = (classifiers["reference"] - classifiers["open_clip"]).abs().max().item()
        rows[1]["prediction_agreement"] = float((preds["reference"] == preds["open_clip"]).mean())
    return rows


def _retrieval_rows(encoders, tok, ds: dict, config: dict, ctx: Context, common: dict) -> list[dict]:
    """Image-text retrieval recall@1/5/10 both ways (CLIP_benchmark's definition) on an image–caption set."""
    r = catalog.load_retrieval(ds["name"], ds["root"])
    rows = []
    for enc in encoders:
        t0 = time.perf_counter()
        feats = _features(enc.encode, r.data, enc.transform, None, enc.id, enc.weights, config, ctx, enc.id)
        with torch.no_grad():
            text = torch.cat([enc.module.encode_text(tok(r.captions[i: i + 256]).to(ctx.device)).float().cpu()
                              for i in range(0, len(r.captions), 256)])
        kept = {int(row): k for k, row in enumerate(feats.indices)}  # unreadable images drop out, their captions too
        captions = [j for j, owner in enumerate(r.caption_image) if owner in kept]
        owners = np.array([kept[r.caption_image[j]] for j in captions])
        rec = retrieval_recall(torch.from_numpy(feats.features), text[captions], owners, RECALL_KS)
        rows.append({**common, "library": enc.library, "task": "retrieval", "templates": "",
                     "images": len(feats.labels), "captions": len(captions), **rec,
                     **{f"chance_R@{k}": 100.0 * k / max(len(feats.labels), 1) for k in RECALL_KS},
                     "skipped_images": len(feats.skipped), "seconds": time.perf_counter() - t0})
    return rows


def run_unit(unit: str, config: dict, ctx: Context) -> list[dict]:
    kind, _, model_id = unit.partition(":")
    train = config.get("train")
    if kind == "train":
        _, stats = trained_clip(config, ctx)
        return [{"model": model_id, "library": "reference", "task": "training", "weights": "trained (here)",
                 "dataset": train["data"]["name"], **{k: v for k, v in stats.items() if k != "attribute_thresholds"}}]
    if train and model_id == train["id"]:
        return _eval_default(config, ctx)
    return _eval_pretrained(next(m for m in config["models"] if m["id"] == model_id), config, ctx)


def tables(rows: list[dict], config: dict) -> list[Table]:
    df = pd.DataFrame(rows)
    if "published_top1" in df:
        df["diff_vs_published"] = df["top1"] - df["published_top1"]
    df = pd.concat([df, catalog.dataset_means(df)], ignore_index=True)
    for c in ("images", "captions", "distinct_captions", "train_images", "probe_train_images", "steps", "params",
              "skipped_images", "datasets"):
        if c in df:  # counts stay integers in the tables although other rows leave them empty
            df[c] = pd.Series([int(v) if v == v else float("nan") for v in df[c]], index=df.index, dtype=object)
    recall = [f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in RECALL_KS]
    cols = ["model", "library", "weights", "dataset", "task", "templates", "images", "top1", "top5",
            "mean_per_class_recall", *recall, "chance_R@1", "distinct_captions", "temperature",
            "classifier_max_abs_diff", "prediction_agreement", "published_top1", "diff_vs_published", "datasets",
            "final_loss", "train_seconds"]
    if config.get("train"):
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
            "class image by image. The full profile measures pretrained open_clip weights on ImageNet "
            "validation with open_clip's 1,000 class names and OpenAI's 80 templates, beside open_clip's "
            "published top-1.")
    else:
        notes = ("Zero-shot ImageNet classification with open_clip's class names and OpenAI's 80 templates; "
                 "published_top1 from " + config.get("published_source", "") + ". The reference row is the "
                 "reference CLIP converted from the same weights (prediction_agreement: image by image).")
    return [Table("zero_shot", df, "CLIP zero-shot classification and retrieval",
                  "CLIP zero-shot classification (held-out templates), retrieval recall@k, learned temperature, "
                  "linear probe beside it; open_clip on the same weights",
                  [c for c in cols if c in df], notes)]
