"""The tasks, each written once: zero-shot classification, retrieval, the linear probe and the verdict of a
reference against the library model it was converted from. The zero_shot and linear_probe suites
(harness.evals), harness.evaluate, the checkpoint sweeps and `bench --parts peers` all call these.

    opts = Options(device, batch_size=256, workers=0, cache_dir=..., images=ImageStore(...), texts=TextStore())
    zero_shot_rows([model, twin], dataset, opts, common)    a classification, retrieval or WinoGAViL set's rows
    probe_rows([model, twin], dataset, opts, common)         the linear probe's rows
    features(model, data, indices, opts)                     image features (harness.methods.features)
    classifier(model, names, templates, opts)                the zero-shot classifier, kept in opts.texts
    verdict(library, reference, ...)                         the reference-vs-library verdict

A row's measured fields come from here; what a caller adds is who it is (model, weights, published numbers).
`models` is the model and, optionally, its reference twin second (harness.models.reference): the twin's row
carries the verdict.

What is kept between calls, and by what it is keyed (never by a repr, an address or a name):
  - decoded images (opts.images, harness.methods.features.ImageStore): the data set's files, labels and class
    names, the rows, what the preprocessing computes;
  - image features on disk (opts.cache_dir, the suites): the same and the model's weights hash;
  - zero-shot classifiers and caption embeddings (opts.texts, TextStore): the texts, the tokenizer object, the
    device and autocast, and the state of every tensor encode_text read when it was built — parameters and
    buffers wherever they live (an image tower's included), each by its object (held by a weak reference: a new
    tensor at a freed address is not taken for the old one), its version counter (every in-place change bumps it:
    an optimizer step, load_state_dict, copy_), storage, dtype, shape and device — and the identity of every
    parameter and buffer of the model (a layer swapped in anywhere). Nothing is copied to the host to check it.
    Not seen: a change made through `.data` (torch hides those from the version counter) or to a plain Python
    attribute that encode_text reads; call harness.evaluation.clear() after such changes.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import data as data_lib
from .data import datacomp
from .data.images import balanced_subset
from .infra import predictions, results
from .methods import paired, task_metrics
from .methods.classifier import OUTPUTS, classification_metrics, retrieval_recall, zero_shot_classifier
from .methods.features import Features, ImageStore, extract
from .methods.probe import ProbeResult, linear_probe, sklearn_probe
from .models import Model, dtype_of

RECALL_KS = (1, 5, 10)


class TextStore:
    """Zero-shot classifiers and caption embeddings kept between calls (keys: the module docstring); the
    `capacity` most recently built, or fewer when their bytes pass `max_bytes`."""

    def __init__(self, capacity: int = 64, max_bytes: int = 2**30):
        self.capacity, self.max_bytes = capacity, max_bytes
        self.entries: OrderedDict[tuple, tuple[list, torch.Tensor]] = OrderedDict()
        self.built = 0

    def clear(self) -> None:
        self.entries.clear()

    def get(self, module: torch.nn.Module, key: tuple, build) -> torch.Tensor:
        full = (id(module), _structure(module), *key)
        entry = self.entries.get(full)
        if entry is not None and _unchanged(entry[0], module):
            self.entries.move_to_end(full)
            return entry[1]
        reads, value = _recorded(module, build)
        self.built += 1
        self.entries[full] = ([weakref.ref(module), *reads], value)
        self.entries.move_to_end(full)
        while len(self.entries) > self.capacity or (
                len(self.entries) > 1 and sum(v.numel() * v.element_size() for _, v in self.entries.values())
                > self.max_bytes):
            self.entries.popitem(last=False)
        return value


def _tensors(module: torch.nn.Module) -> dict[int, torch.Tensor]:
    """Every tensor the module holds: parameters and buffers (shared ones once), tensor attributes of submodules."""
    out = {id(t): t for t in module.parameters()}
    out.update({id(t): t for t in module.buffers()})
    for m in module.modules():
        out.update({id(v): v for v in vars(m).values() if isinstance(v, torch.Tensor)})
    return out


def _structure(module: torch.nn.Module) -> str:
    """The identity of every parameter and buffer (a new layer anywhere changes it); no tensor is read."""
    h = hashlib.sha256()
    for name, t in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
        h.update(f"{name}:{id(t)};".encode())
    return h.hexdigest()[:16]


def _state(t: torch.Tensor) -> tuple:
    return (t._version, t.data_ptr(), t.dtype, tuple(t.shape), str(t.device))


def _recorded(module: torch.nn.Module, build) -> tuple[list, torch.Tensor]:
    """build() and [(weak reference, state)] of every tensor of `module` it read (a TorchFunctionMode sees each
    tensor an operation takes)."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_leaves

    held = _tensors(module)
    seen: dict[int, torch.Tensor] = {}

    class Reads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            for a in tree_leaves((args, kwargs or {})):
                if isinstance(a, torch.Tensor) and id(a) in held:
                    seen[id(a)] = a
            return func(*args, **(kwargs or {}))

    with Reads():
        value = build()
    return [(weakref.ref(t), _state(t)) for t in seen.values()], value


def _unchanged(reads: list, module: torch.nn.Module) -> bool:
    if reads[0]() is not module:
        return False
    for ref, state in reads[1:]:
        t = ref()
        if t is None or _state(t) != state:
            return False
    return True


@dataclass
class Options:
    """How the tasks run: where, in what batches, what is kept (module docstring)."""

    device: torch.device
    batch_size: int = 256
    workers: int = 0  # DataLoader workers decoding image files
    autocast: torch.dtype | None = None  # the encoders under torch.autocast
    seed: int = 0
    cache_dir: Path | None = None  # image features on disk (the suites)
    images: ImageStore | None = None  # decoded images in memory (harness.evaluate)
    texts: TextStore | None = None  # zero-shot classifiers and caption embeddings in memory (harness.evaluate)
    progress: bool = True  # progress bars on stderr

    @classmethod
    def of_suite(cls, config: dict, ctx) -> Options:
        from .methods.features import extraction_options

        o = extraction_options(config)
        return cls(ctx.device, o["batch_size"], o["workers"], o["autocast"], ctx.seed,
                   ctx.cache_dir if ctx.use_cache else None)


def input_dtype(model: Model, opts: Options) -> torch.dtype:
    """The dtype images enter the image tower in: its parameters' (a bfloat16 model takes bfloat16 images), float32
    under autocast (autocast casts)."""
    if opts.autocast is not None:
        return torch.float32
    p = next((p for p in model.image_tower.parameters() if p.is_floating_point()), None)
    return p.dtype if p is not None else torch.float32


def precision(model: Model, opts: Options) -> str:
    """A row's dtype column: the dtype of the model's parameters, read from them (not the one asked for); under
    autocast, the autocast dtype beside it."""
    dtype = dtype_of(model)
    return dtype if opts.autocast is None else f"{dtype}, autocast {str(opts.autocast).removeprefix('torch.')}"


def features(model: Model, data, indices, opts: Options, desc: str | None = None) -> Features:
    """The model's image features of `indices` (all rows: None) of `data`."""
    model_id = model.id if not model.variant else f"{model.id} ({model.variant})"
    return extract(model.encode_image, data, model.transform, indices=indices, model_id=model_id,
                   weights=model.weights if opts.cache_dir is not None else "", device=opts.device,
                   input_dtype=input_dtype(model, opts), batch_size=opts.batch_size, cache_dir=opts.cache_dir,
                   store=opts.images, desc=desc or model.id, workers=opts.workers, autocast=opts.autocast,
                   progress=opts.progress)


def _texts_key(model: Model, texts, opts: Options) -> tuple:
    digest = hashlib.sha256(repr(texts).encode()).hexdigest()
    return (digest, id(model.tokenizer), str(opts.device), str(opts.autocast))


def classifier(model: Model, names, templates, opts: Options) -> torch.Tensor:
    """harness.zero_shot_classifier of the model's text tower, on the CPU; kept in opts.texts."""
    def build():
        return zero_shot_classifier(model.module, model.tokenizer, names, templates, device=opts.device).cpu()

    if opts.texts is None:
        return build()
    return opts.texts.get(model.module, (*_texts_key(model, (list(names), templates), opts), model.tokenizer),
                          build)


def caption_embeddings(model: Model, captions: list[str], opts: Options, batch: int = 256) -> torch.Tensor:
    """encode_text of every caption (float32, CPU, `batch` at a time); kept in opts.texts."""
    @torch.no_grad()
    def build():
        return torch.cat([model.encode_text(model.tokenizer(captions[i: i + batch]).to(opts.device)).float().cpu()
                          for i in range(0, len(captions), batch)])

    if opts.texts is None:
        return build()
    return opts.texts.get(model.module, (*_texts_key(model, captions, opts), batch, model.tokenizer), build)


# ------------------------------------------------------------------------------------------------ verdicts
def rel_diff(features: np.ndarray, truth: np.ndarray) -> float:
    """The largest difference of two feature sets over the largest feature (as the linear probe reports it)."""
    return float(np.abs(features - truth).max() / max(np.abs(truth).max(), 1e-30)) if truth.size else 0.0


def verdict(library: dict, reference: dict, labels: np.ndarray, drift: float, what: str,
            autocast: str | None = None) -> dict:
    """The reference twin's row fields: its predictions against the library model's image by image
    (agreement, McNemar) and the verdict (harness.methods.paired.agreement_verdict) on `drift`, their measured
    relative difference named by `what`."""
    return {**paired.agreement(library["predictions"], reference["predictions"], labels),
            **paired.agreement_verdict(library, reference, drift, what, autocast)}


# ------------------------------------------------------------------------------------ zero-shot classification
def templates_label(ds: data_lib.DataSpec) -> str:
    """Where a data set's templates came from: the catalog's (or CLIP's plain one), a file, the config's list."""
    return "catalog" if ds.templates is None else Path(ds.templates).name if isinstance(ds.templates, str) \
        else "config"


@dataclass
class Classified:
    feats: Features
    classifier: torch.Tensor
    metrics: dict  # top1, top5, mean_per_class_recall
    outputs: dict  # per image: predictions, ranked, margin, scale


def made(model: Model) -> dict:
    """How a row's weights were made, for the regression gate (harness.tools.diff): a suite's training run and its
    seed, or nothing (fixed weights)."""
    if model.training is None:
        return {}
    return {"training": model.training, "training_seed": model.training_seed, "weights_hash": model.weights}


def classes_hash(names) -> str:
    """The class list a row's labels index (names and order): two rows with other lists are not compared."""
    return results.stable_hash([str(n) for n in names])


def classify(model: Model, data, indices, names, templates, opts: Options, clf: torch.Tensor | None = None,
             desc: str | None = None) -> Classified:
    """Zero-shot classification of `indices` of `data`: the classifier (built, kept, or given as `clf`) against
    the image features."""
    clf = classifier(model, names, templates, opts) if clf is None else clf
    feats = features(model, data, indices, opts, desc)
    m = classification_metrics(torch.from_numpy(feats.features), clf, feats.labels)
    return Classified(feats, clf, m, {k: m.pop(k) for k in OUTPUTS})


def classification_rows(models: list[Model], ds: data_lib.DataSpec, opts: Options, common: dict,
                        check_open_clip: bool = False, autocast: str | None = None) -> list[dict]:
    """A classification set's rows: each model's top-1, top-5 and mean per-class recall (DataComp's main metric
    for its tasks), its predictions; the twin's verdict; with check_open_clip, the model's classifier against
    open_clip's own build_zero_shot_classifier on the same text tower."""
    test = data_lib.load(ds, "test")
    names, temps = test.classnames, test.templates
    dc = datacomp.task(ds.path) if ds.source == "datacomp" else None
    per_class = ds.options.get("test_per_class")
    idx = balanced_subset(test.labels, per_class, seed=0) if per_class else None
    rows, done = [], []
    for model in models:
        t0 = time.perf_counter()
        c = classify(model, test, idx, names, temps, opts)
        m = dict(c.metrics)
        if dc:  # the task's main metric, as DataComp computes it (harness.methods.task_metrics)
            meta = np.asarray(test.dataset.select_columns(["metadata"])[c.feats.indices]["metadata"]) if dc.group \
                else None
            m["main_metric"] = 100.0 * task_metrics.main_metric(dc.metric, c.outputs["ranked"], c.feats.labels, meta,
                                                                dc.group[0] if dc.group else None)
        rows.append(predictions.attach(
            {"model": model.id, **common, "library": model.library, "dtype": precision(model, opts),
             "task": "classification",
             **made(model), "classes_hash": classes_hash(names),
             "templates": f"{templates_label(ds)} ({len(temps)})", "images": len(c.feats.labels), **m,
             "skipped_images": len(c.feats.skipped), "seconds": time.perf_counter() - t0},
            c.feats.indices, c.feats.labels, c.outputs["ranked"], c.outputs["margin"]))
        done.append(c)
    if check_open_clip and not isinstance(temps, dict):
        import open_clip  # it takes one list of templates for every class

        theirs = open_clip.build_zero_shot_classifier(models[0].module, models[0].tokenizer, names, temps,
                                                      device=opts.device)
        rows[0]["classifier_max_abs_diff"] = (done[0].classifier - theirs.cpu()).abs().max().item()
    if len(models) == 2:  # the reference twin against the model it was converted from
        lib, ref = done
        rows[1]["classifier_max_abs_diff"] = gap = (ref.classifier - lib.classifier).abs().max().item()
        rows[1]["feature_max_rel_diff"] = drift = rel_diff(ref.feats.features, lib.feats.features)
        rows[1].update(verdict(lib.outputs, ref.outputs, lib.feats.labels, max(gap, drift),
                               "classifier_max_abs_diff and feature_max_rel_diff", autocast))
    return rows


# ------------------------------------------------------------------------------------------------ retrieval
def retrieval(model: Model, images, captions: list[str], caption_image, opts: Options, indices=None,
              desc: str | None = None, text_batch: int = 256) -> dict:
    """Image–text recall@1/5/10 both ways (CLIP_benchmark's definition) and the mean of the two recall@1 (open_clip's
    table, DataComp); an image that cannot be read drops out with its captions."""
    feats = features(model, images, indices, opts, desc)
    text = caption_embeddings(model, captions, opts, text_batch)
    kept = {int(row): k for k, row in enumerate(feats.indices)}
    keep = [j for j, owner in enumerate(caption_image) if int(owner) in kept]
    owners = np.array([kept[int(caption_image[j])] for j in keep], dtype=np.int64)
    rec = retrieval_recall(torch.from_numpy(feats.features), text[keep], owners, RECALL_KS)
    rec["mean_R@1"] = (rec["image_to_text_R@1"] + rec["text_to_image_R@1"]) / 2
    return {"images": len(feats.labels), "captions": len(keep), **rec,
            **{f"chance_R@{k}": 100.0 * k / max(len(feats.labels), 1) for k in RECALL_KS},
            "skipped_images": len(feats.skipped)}


def retrieval_rows(models: list[Model], ds: data_lib.DataSpec, opts: Options, common: dict) -> list[dict]:
    r = data_lib.load_retrieval(ds)
    rows = []
    for model in models:
        t0 = time.perf_counter()
        rec = retrieval(model, r.data, r.captions, r.caption_image, opts)
        if "datacomp_metric" in common:
            rec["main_metric"] = rec["mean_R@1"]
        rows.append({"model": model.id, **common, "library": model.library, "dtype": precision(model, opts),
                     "task": "retrieval", "templates": "", **rec,
                     "seconds": time.perf_counter() - t0})
    return rows


def winogavil_rows(models: list[Model], ds: data_lib.DataSpec, opts: Options, common: dict) -> list[dict]:
    """WinoGAViL as DataComp scores it (eval_utils/wino_eval.py): for each cue, the candidate images most similar
    to "A(n) <cue>" — as many as it has associations — against those associations, by Jaccard index."""
    from tqdm.auto import tqdm

    from .data.images import to_rgb

    wino = datacomp.load_winogavil(ds.root)
    rows = []
    for model in models:
        t0 = time.perf_counter()
        scores, sizes = [], []
        for ex in tqdm(wino, desc=f"WinoGAViL {model.id}", leave=False):
            cue = ex["cue"].lower()
            prompt = ("An " if cue[:1] in "aeiou" and cue else "A ") + cue
            raw = getattr(model.transform, "raw_images", False)  # a processor that composites transparency itself
            images = torch.stack([model.transform(im if raw else to_rgb(im)) for im in ex["candidate_images"]])
            with torch.no_grad():
                img = torch.nn.functional.normalize(model.encode_image(images.to(opts.device)).float(), dim=-1)
                txt = torch.nn.functional.normalize(model.encode_text(model.tokenizer([prompt]).to(opts.device))
                                                    .float(), dim=-1)
            similarity = (txt @ img.T).squeeze(0).cpu().numpy()
            truth = np.isin(ex["candidates"], ex["associations"])
            scores.append(task_metrics.winogavil_instance(similarity, truth))
            sizes.append(len(images))
        rows.append({"model": model.id, **common, "library": model.library, "dtype": precision(model, opts),
                     "task": "winogavil", "templates": "",
                     "images": len(scores),
                     "jaccard_all": 100.0 * float(np.mean(scores)) if scores else float("nan"),
                     "main_metric": 100.0 * task_metrics.jaccard_10_12(scores, sizes),
                     "seconds": time.perf_counter() - t0})
    return rows


def zero_shot_rows(models: list[Model], ds: data_lib.DataSpec, opts: Options, common: dict,
                   check_open_clip: bool = False, autocast: str | None = None) -> list[dict]:
    """The zero_shot suite's rows of one data set, by its kind: classification, retrieval or WinoGAViL."""
    kind = data_lib.task(ds)
    if kind == "retrieval":
        return retrieval_rows(models, ds, opts, common)
    if kind == "winogavil":
        return winogavil_rows(models, ds, opts, common)
    return classification_rows(models, ds, opts, common, check_open_clip, autocast)


# --------------------------------------------------------------------------------------------- linear probe
def probe(model: Model, train, test, train_idx, test_idx, opts: Options, *, val_fraction: float = 0.1,
          sweep_max_images: int | None = None, log=None) -> tuple[ProbeResult, Features, Features]:
    """harness.linear_probe on the model's features of `train_idx` of train and `test_idx` of test."""
    ftr = features(model, train, train_idx, opts, f"{model.id} train")
    fte = features(model, test, test_idx, opts, f"{model.id} test")
    res = linear_probe(ftr.features, ftr.labels, fte.features, fte.labels, num_classes=len(train.classnames),
                       seed=opts.seed, device=opts.device, val_fraction=val_fraction,
                       sweep_max_images=sweep_max_images, log=log)
    return res, ftr, fte


def probe_rows(models: list[Model], ds: data_lib.DataSpec, opts: Options, common: dict, *,
               val_fraction: float = 0.1, sweep_max_images: int | None = None, check_sklearn: bool = False,
               autocast: str | None = None, log=None) -> list[dict]:
    """The linear_probe suite's rows of one data set: each model's probe (train_per_class / test_per_class of
    every class when the declaration asks for them, drawn with the seed), scikit-learn on the library model's
    features at the same strength (check_sklearn), the twin's verdict."""
    import sys

    train, test = data_lib.load(ds, "train"), data_lib.load(ds, "test")
    o = ds.options
    train_idx = balanced_subset(train.labels, o["train_per_class"], opts.seed) if o.get("train_per_class") else None
    test_idx = balanced_subset(test.labels, o["test_per_class"], opts.seed) if o.get("test_per_class") else None
    rows, done = [], []
    for k, model in enumerate(models):
        def phase(name: str, seconds: float, m=model) -> None:  # as each phase ends, in the unit's log (stderr)
            if log is not None:
                log(name, seconds)
            else:
                print(f"linear_probe {m.id} on {train.name}: {name} {seconds:.1f} s", file=sys.stderr, flush=True)

        t0 = time.perf_counter()
        ftr = features(model, train, train_idx, opts, f"{model.id} train")
        fte = features(model, test, test_idx, opts, f"{model.id} test")
        t1 = time.perf_counter()
        phase("extraction", t1 - t0)
        res = linear_probe(ftr.features, ftr.labels, fte.features, fte.labels, num_classes=len(train.classnames),
                           seed=opts.seed, device=opts.device, val_fraction=val_fraction,
                           sweep_max_images=sweep_max_images, log=phase)
        t2 = time.perf_counter()
        row = {"model": model.id, **common, "library": model.library, "dtype": precision(model, opts),
               "dataset": train.name,
               **made(model), "classes_hash": classes_hash(train.classnames),
               "train_images": len(ftr.labels), "test_images": len(fte.labels),
               "feature_dim": ftr.features.shape[1] if ftr.features.ndim == 2 else 0,
               "top1": res.top1, "top1_ci_low": res.top1_ci[0], "top1_ci_high": res.top1_ci[1], "top5": res.top5,
               "mean_per_class_recall": res.mean_per_class_recall, "strength": res.strength,
               "iterations": res.iterations, "converged": res.converged, "final_gradient": res.gradient,
               "gradient_bound": res.gradient_bound, "skipped_images": len(ftr.skipped) + len(fte.skipped),
               "feature_chunks_reused": ftr.from_cache + fte.from_cache,
               "feature_chunks_computed": ftr.computed + fte.computed,
               "extract_seconds": t1 - t0, "probe_seconds": t2 - t1}
        if check_sklearn and k == 0:  # the twin's features equal the library's to round-off: not run again
            sk_top1, _ = sklearn_probe(ftr.features, ftr.labels, fte.features, fte.labels, res.strength)
            row.update(sklearn_top1=sk_top1, sklearn_diff=res.top1 - sk_top1,
                       sklearn_seconds=time.perf_counter() - t2)
            phase("scikit-learn check", row["sklearn_seconds"])
        rows.append(predictions.attach(row, fte.indices, fte.labels, res.ranked, res.margin))
        done.append((res, ftr, fte))
    if len(models) == 2:  # the reference twin against the library model it was converted from, image by image
        (lib, lib_tr, lib_te), (ref, ref_tr, ref_te) = done
        drift = max(rel_diff(ref_tr.features, lib_tr.features), rel_diff(ref_te.features, lib_te.features))
        rows[1]["feature_max_rel_diff"] = drift
        rows[1].update(verdict(vars(lib), vars(ref), lib_te.labels, drift, "feature_max_rel_diff", autocast))
    return rows
