"""harness.evaluate (this module: harness.evaluation): the suites' rows for a model in memory, in a training loop.

    import harness
    for epoch in range(epochs):
        train_one_epoch(model)
        rows = harness.evaluate(model, ["imagefolder:/data/val", "cifar10"], tasks=("zero_shot", "linear_probe"),
                                step=epoch, log=writer)   # a TensorBoard SummaryWriter, or any log(metrics, step)

`model`: anything the registry accepts, in memory — a timm or open_clip module, a reference ViT or CLIP, an
nn.Module with encode_image (and encode_text with a `tokenizer` attribute, or `tokenizer=`), a resolved
harness.models.Model — or a registry name. `datasets`: harness.data names or declarations, as in a suite's
`datasets`. The rows are the zero_shot and linear_probe suites' (top1, top5, mean_per_class_recall, images, ...;
retrieval sets give recall@k both ways), with `step`; nothing is printed unless verbose=True and no file is written.

Repeated calls in one process pay only for what changed:
  - images are decoded and transformed once per (data set, split, subset, transform) and kept in memory, up to
    `cache_bytes` in all (least recently used first out; a set larger than the bound is decoded each call, with a
    warning saying so);
  - the zero-shot classifier (and a retrieval set's caption embeddings) is rebuilt only when the text tower's
    weights (every parameter outside the image tower) or the class names, templates or captions change;
  - the image features are recomputed each call (the image tower is what training changes).
`harness.evaluation.counters()` says how many images were decoded and classifiers built so far (tests/test_evaluate.py).

Preprocessing and tokenizer, where not given: a timm model's pretrained_cfg, an open_clip model's preprocess_cfg
and BPE tokenizer, a harness.models.Model's own; for any other module the python: registry's rules (a
`data_config` attribute in timm's form, timm's 224-pixel defaults otherwise; a `tokenizer` attribute), so that the
same module evaluated here and through `python -m harness run` on its saved weights gives the same rows.
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import data as data_lib
from . import models
from .data.images import balanced_subset
from .data.transforms import batched
from .methods.classifier import OUTPUTS, classification_metrics, retrieval_recall, zero_shot_classifier
from .methods.features import _file_batches, _in_memory_batches
from .methods.probe import linear_probe

TASKS = ("zero_shot", "linear_probe")
CACHE_BYTES = 4 * 2**30  # the decoded images kept between calls, in all
IMAGE_TOWERS = ("visual", "vision_model", "image_encoder", "visual_encoder")  # attribute names of image towers


@dataclass
class _Decoded:
    images: torch.Tensor  # (N, C, H, W) float32, transformed
    labels: np.ndarray
    indices: np.ndarray  # data-set rows of the images kept (unreadable ones dropped)
    skipped: list[str]

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()


_IMAGES: OrderedDict[tuple, _Decoded] = OrderedDict()
_CLASSIFIERS: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_COUNTS = {"decoded_images": 0, "classifiers_built": 0, "evaluations": 0}


def counters() -> dict[str, int]:
    """How many images this process decoded, how many zero-shot classifiers it built, how many calls it served."""
    return dict(_COUNTS)


def clear() -> None:
    """Forget the kept images and classifiers (the counters stay)."""
    _IMAGES.clear()
    _CLASSIFIERS.clear()


# ------------------------------------------------------------------------------------------------ the model


def _as_model(model, tokenizer, transform) -> models.Model:
    """A harness.models.Model for what was given (see the module docstring)."""
    if isinstance(model, (str, dict, models.ModelSpec)):
        model = models.resolve(model)
    if isinstance(model, models.Model):
        resolved = model
    else:
        resolved = _wrap(model)
    if transform is not None:
        resolved = _replace(resolved, transform=transform)
    if tokenizer is not None:
        resolved = _replace(resolved, tokenizer=tokenizer)
    return resolved


def _replace(m: models.Model, **changes) -> models.Model:
    import dataclasses

    return dataclasses.replace(m, **changes)


def _wrap(module: torch.nn.Module) -> models.Model:
    kind = type(module).__module__
    spec = models.ModelSpec("python", type(module).__name__, type(module).__name__, "in memory")
    if kind.startswith("timm."):
        import timm.data

        from .models import timm as timm_lib

        # its pretrained_cfg's preprocessing, at the size the model was built for (img_size=... changes the model,
        # not its pretrained_cfg)
        cfg = timm.data.resolve_data_config({}, model=module)
        size = getattr(getattr(module, "patch_embed", None), "img_size", None)
        if size is not None:
            cfg["input_size"] = (cfg["input_size"][0], *size)
        return models.Model(spec, "timm", module, timm_lib.features(module), timm.data.create_transform(**cfg),
                            input_size=tuple(cfg["input_size"]))
    if kind.startswith("open_clip."):
        import open_clip

        from .models.open_clip import transform as oc_transform

        tok = open_clip.tokenizer.SimpleTokenizer(context_length=module.context_length)
        return models.Model(spec, "open_clip", module, module.encode_image, oc_transform(module),
                            image_tower=module.visual, input_size=(3, *module.visual.image_size),
                            encode_text=module.encode_text, tokenizer=tok)
    if kind.startswith("harness.reference"):
        return _reference(module, spec)
    from .models.python import model_of

    return model_of(module, spec)


def _reference(module: torch.nn.Module, spec: models.ModelSpec) -> models.Model:
    """A reference CLIP: OpenAI's preprocessing at its image size and CLIP's BPE tokenizer (its vocabulary is
    CLIP's); a reference ViT: timm's defaults at its image size (pass transform= for anything else)."""
    import timm.data

    if hasattr(module, "text"):
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        size = module.config.vision.image_size
        tok = None
        if module.config.text.vocab_size == 49408:
            tok = open_clip.tokenizer.SimpleTokenizer(context_length=module.config.text.context_length)
        return models.Model(spec, "reference", module, module.encode_image,
                            image_transform_v2(PreprocessCfg(size=size), is_train=False), image_tower=module.visual,
                            input_size=(3, size, size), encode_text=module.encode_text if tok else None,
                            tokenizer=tok)
    size = module.config.image_size
    cfg = timm.data.resolve_data_config({"input_size": (module.config.in_chans, size, size)})
    return models.Model(spec, "reference", module,
                        lambda x: module.forward_head(module.forward_features(x), pre_logits=True),
                        timm.data.create_transform(**cfg), input_size=tuple(cfg["input_size"]))


def _text_weights(module: torch.nn.Module) -> str:
    """A hash of the parameters outside the image tower: what the zero-shot classifier depends on."""
    towers = [getattr(module, a) for a in IMAGE_TOWERS if isinstance(getattr(module, a, None), torch.nn.Module)]
    inner = getattr(module, "hf", None)  # harness.models.hf's wrappers
    if inner is not None:
        towers += [getattr(inner, a) for a in IMAGE_TOWERS if isinstance(getattr(inner, a, None), torch.nn.Module)]
    skip = {id(p) for t in towers for p in t.parameters()}
    import hashlib

    h = hashlib.sha256()
    for name, p in module.named_parameters():
        if id(p) not in skip:
            h.update(name.encode())
            h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ the images


def _decoded(ds: data_lib.ImageData, indices: np.ndarray | None, transform, cache_bytes: int,
             batch_size: int) -> _Decoded:
    """The transformed images of `indices` (all rows by default), decoded once and kept while they fit."""
    import hashlib

    rows = np.arange(len(ds)) if indices is None else np.asarray(indices)
    fast = batched(transform) if ds.in_memory else None
    key = (ds.fingerprint, ds.split, hashlib.sha256(rows.tobytes()).hexdigest(), repr(fast or transform))
    if key in _IMAGES:
        _IMAGES.move_to_end(key)
        return _IMAGES[key]
    batches = (_in_memory_batches(ds, rows, fast, batch_size) if fast is not None else
               _file_batches(ds, rows, transform, batch_size, 0, pin=False))
    images, labels, kept, skipped = [], [], [], []
    for x, y, r, bad in batches:
        skipped += [message for _, message in bad]
        if x is not None:
            images.append(x.float())
            labels.append(y)
            kept.append(r)
    _COUNTS["decoded_images"] += len(rows)
    if skipped:
        warnings.warn(f"{ds.name}: skipped {len(skipped)} unreadable image(s), e.g. {skipped[:3]}", stacklevel=3)
    out = _Decoded(torch.cat(images) if images else torch.empty(0), np.concatenate(labels) if labels else
                   np.zeros(0, int), np.concatenate(kept) if kept else np.zeros(0, int), skipped)
    if out.nbytes <= cache_bytes:
        _IMAGES[key] = out
        while sum(d.nbytes for d in _IMAGES.values()) > cache_bytes:
            _IMAGES.popitem(last=False)
    else:
        warnings.warn(f"{ds.name} ({ds.split}): {out.nbytes / 2**30:.1f} GiB of transformed images exceed "
                      f"cache_bytes={cache_bytes / 2**30:.1f} GiB: decoded again on every call (raise cache_bytes, "
                      "or give the data set a test_per_class subset)", stacklevel=3)
    return out


@torch.no_grad()
def _features(encode, decoded: _Decoded, device: torch.device, batch_size: int) -> torch.Tensor:
    out = [encode(decoded.images[i: i + batch_size].to(device)).float().cpu()
           for i in range(0, len(decoded.images), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


# ------------------------------------------------------------------------------------------------- the rows


def evaluate(model, datasets, *, tokenizer=None, transform=None, tasks=("zero_shot",), step: int | None = None,
             log=None, device: str | torch.device | None = None, batch_size: int = 256, seed: int = 0,
             cache_bytes: int = CACHE_BYTES, verbose: bool = False) -> pd.DataFrame:
    """The zero_shot and linear_probe suites' rows for `model` on `datasets` (module docstring). The model is put in
    eval mode for the call and given back in the mode it came in; gradients are off; the global RNG is left as it
    was (the probe's validation split draws from its own seed)."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"tasks {unknown}: choose from {', '.join(TASKS)}")
    m = _as_model(model, tokenizer, transform)
    if "zero_shot" in tasks and not m.clip_like:
        raise ValueError(f"{type(m.module).__name__} is not CLIP-like (it needs encode_text and a tokenizer: pass "
                         "tokenizer=, or give the module a tokenizer attribute) for zero_shot; "
                         "tasks=('linear_probe',) probes its image tower")
    param = next(m.module.parameters(), None)
    device = torch.device(device) if device is not None else (param.device if param is not None else
                                                              torch.device("cpu"))
    specs = [data_lib.parse(d) for d in ([datasets] if isinstance(datasets, (str, dict)) else datasets)]
    was_training = m.module.training
    m.module.eval()
    rows = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for ds in specs:
                for task in tasks:
                    t0 = time.perf_counter()
                    rows += [{**r, "seconds": time.perf_counter() - t0}
                             for r in _task_rows(m, ds, task, device, batch_size, seed, cache_bytes)]
    finally:
        m.module.train(was_training)
    _COUNTS["evaluations"] += 1
    df = pd.DataFrame(rows)
    if step is not None:
        df.insert(0, "step", step)
    if log is not None:
        _log(log, df, step)
    if verbose:
        print(df.to_string(index=False))
    return df


def _kept_text(key: tuple, build) -> torch.Tensor:
    """The text side kept under key (a zero-shot classifier, a retrieval set's caption embeddings): build() when it
    is not there; the 64 most recently built are kept."""
    if key not in _CLASSIFIERS:
        _CLASSIFIERS[key] = build()
        _COUNTS["classifiers_built"] += 1
        while len(_CLASSIFIERS) > 64:
            _CLASSIFIERS.popitem(last=False)
    return _CLASSIFIERS[key]


def _task_rows(m: models.Model, ds: data_lib.DataSpec, task: str, device, batch_size: int, seed: int,
               cache_bytes: int) -> list[dict]:
    common = {"model": m.id, "library": m.library, "dataset": ds.name}
    kind = data_lib.task(ds)
    if task == "zero_shot" and kind == "retrieval":
        return [_retrieval_row(m, ds, device, batch_size, cache_bytes, common)]
    if kind != "classification":
        raise ValueError(f"data set {ds.name!r} ({kind}): harness.evaluate runs classification and retrieval sets "
                         "(the zero_shot suite runs the others)")
    test = data_lib.load(ds, "test")
    per_class = ds.options.get("test_per_class")
    idx = balanced_subset(test.labels, per_class, seed=0) if per_class else None
    dec = _decoded(test, idx, m.transform, cache_bytes, batch_size)
    feats = _features(m.encode_image, dec, device, batch_size)
    if task == "zero_shot":
        names, temps = test.classnames, test.templates
        key = (_text_weights(m.module), tuple(names), repr(temps), str(device))
        classifier = _kept_text(key, lambda: zero_shot_classifier(m.module, m.tokenizer, names, temps,
                                                                  device=device).cpu())
        metrics = classification_metrics(feats, classifier, dec.labels)
        for k in OUTPUTS:
            metrics.pop(k)
        # where the templates came from, as the zero_shot suite says it: the catalog's, a file's, the config's
        label = "catalog" if ds.templates is None else Path(ds.templates).name if isinstance(ds.templates, str) \
            else "config"
        return [{**common, "task": "classification", "templates": f"{label} ({len(temps)})",
                 "images": len(dec.labels), **metrics,
                 "skipped_images": len(dec.skipped)}]
    train = data_lib.load(ds, "train")
    tr_per_class = ds.options.get("train_per_class")
    tr_idx = balanced_subset(train.labels, tr_per_class, seed=0) if tr_per_class else None
    tr = _decoded(train, tr_idx, m.transform, cache_bytes, batch_size)
    res = linear_probe(_features(m.encode_image, tr, device, batch_size).numpy(), tr.labels, feats.numpy(),
                       dec.labels, num_classes=len(test.classnames), seed=seed, device=device)
    return [{**common, "task": "linear probe", "images": len(dec.labels), "train_images": len(tr.labels),
             "top1": res.top1, "top5": res.top5, "mean_per_class_recall": res.mean_per_class_recall,
             "skipped_images": len(dec.skipped) + len(tr.skipped)}]


def _retrieval_row(m: models.Model, ds, device, batch_size: int, cache_bytes: int, common: dict) -> dict:
    r = data_lib.load_retrieval(ds)
    dec = _decoded(r.data, None, m.transform, cache_bytes, batch_size)
    feats = _features(m.encode_image, dec, device, batch_size)
    import hashlib

    key = (_text_weights(m.module), hashlib.sha256("\0".join(r.captions).encode()).hexdigest(), str(device))

    @torch.no_grad()
    def embed():  # the captions' embeddings: kept like a classifier, rebuilt as one is
        return torch.cat([m.encode_text(m.tokenizer(r.captions[i: i + 256]).to(device)).float().cpu()
                          for i in range(0, len(r.captions), 256)])

    text = _kept_text(key, embed)
    kept = {int(row): k for k, row in enumerate(dec.indices)}
    captions = [j for j, owner in enumerate(r.caption_image) if owner in kept]
    owners = np.array([kept[r.caption_image[j]] for j in captions])
    rec = retrieval_recall(feats, text[captions], owners)
    rec["mean_R@1"] = (rec["image_to_text_R@1"] + rec["text_to_image_R@1"]) / 2
    return {**common, "task": "retrieval", "images": len(dec.labels), "captions": len(captions), **rec,
            "skipped_images": len(dec.skipped)}


METRICS = ("top1", "top5", "mean_per_class_recall", "mean_R@1", "image_to_text_R@1", "text_to_image_R@1")


def _log(log, df: pd.DataFrame, step: int | None) -> None:
    """Each row's metrics as "<data set>/<task>/<metric>": to a SummaryWriter's add_scalar, or log(dict, step)."""
    metrics = {f"{r['dataset']}/{r['task']}/{k}": float(r[k]) for _, r in df.iterrows() for k in METRICS
               if k in r and pd.notna(r[k])}
    if hasattr(log, "add_scalar"):
        for tag, value in metrics.items():
            log.add_scalar(tag, value, step)
    else:
        log(metrics, step)
