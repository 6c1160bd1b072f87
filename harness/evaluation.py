"""harness.evaluate (this module: harness.evaluation): the suites' rows for a model in memory, in a training loop.

    import harness
    for epoch in range(epochs):
        train_one_epoch(model)
        rows = harness.evaluate(model, ["imagefolder:/data/val", "cifar10"], tasks=("zero_shot", "linear_probe"),
                                step=epoch, log=writer)   # a TensorBoard SummaryWriter, or any log(metrics, step)

`model`: anything the registry accepts, in memory — a timm or open_clip module, a transformers model, a reference
ViT or CLIP, an nn.Module with encode_image (and encode_text with a `tokenizer` attribute, or `tokenizer=`), a
torch.compile'd or DistributedDataParallel-wrapped one (unwrapped), a resolved harness.models.Model — or a registry
name. It is read by the same code as the registry reads the library's models (harness.models.wrap), and its rows
are computed by the same code as the zero_shot and linear_probe suites' (harness.tasks): top1, top5,
mean_per_class_recall, images, ...; retrieval sets give recall@k both ways; with `step`.
Nothing is printed unless verbose=True and no file is written.

Repeated calls in one process pay only for what changed (harness.tasks says by what each is keyed):
  - images are decoded once per (data set files, labels, rows, preprocessing) and kept in memory as uint8 after
    resizing and cropping (the rest runs on the device), up to `cache_bytes` in all, least recently used out
    first; a set larger than the bound is streamed batch by batch on every call (memory: the bound and a few
    batches), with a warning saying so; a transform the harness cannot describe (a Lambda, your own object) is
    never reused;
  - the zero-shot classifier (and a retrieval set's caption embeddings) is rebuilt only when a tensor the text
    tower read changed (version counters, no copy to the host), or the names, templates, captions, tokenizer,
    device or autocast did;
  - the image features are recomputed each call (the image tower is what training changes).
The model comes back with every submodule in the mode it came in, the global RNG as it was; the call runs without
gradients and without the caller's autocast (pass autocast=torch.bfloat16 to ask for it).
`harness.evaluation.counters()` says how many images were decoded and classifiers built so far.
"""

from __future__ import annotations

import os

import pandas as pd
import torch

from . import data as data_lib
from . import models
from . import tasks as task_layer
from .infra import predictions
from .methods import features

TASKS = ("zero_shot", "linear_probe")
CACHE_BYTES = 4 * 2**30  # the decoded images kept between calls, in all

_IMAGES = features.ImageStore(CACHE_BYTES)
_TEXTS = task_layer.TextStore()
_CALLS = {"evaluations": 0}


def counters() -> dict[str, int]:
    """How many images this process decoded, how many zero-shot classifiers and caption sets it built, how many
    calls it served."""
    return {"decoded_images": features.COUNTS["decoded_images"], "classifiers_built": _TEXTS.built, **_CALLS}


def clear() -> None:
    """Forget the kept images, classifiers and caption embeddings (the counters stay)."""
    _IMAGES.clear()
    _TEXTS.clear()


def _as_model(model, tokenizer, transform, device) -> models.Model:
    """A harness.models.Model for what was given (module docstring)."""
    import dataclasses

    if isinstance(model, (str, dict, models.ModelSpec)):  # a registry name: what `python -m harness run` loads
        from .infra.suite import DEFAULT_CACHE
        from .run.suites import default_config

        model = models.resolve(model, device=device or "cpu", cache_dir=DEFAULT_CACHE, suite_config=default_config)
    m = model if isinstance(model, models.Model) else models.wrap(model, tokenizer)
    if transform is not None:
        m = dataclasses.replace(m, transform=transform)
    if tokenizer is not None and isinstance(model, models.Model):
        m = dataclasses.replace(m, tokenizer=tokenizer, encode_text=m.encode_text or getattr(m.module, "encode_text",
                                                                                            None))
    return m


def evaluate(model, datasets, *, tokenizer=None, transform=None, tasks=("zero_shot",), step: int | None = None,
             log=None, device: str | torch.device | None = None, batch_size: int = 256, workers: int | None = None,
             seed: int = 0, cache_bytes: int = CACHE_BYTES, autocast: torch.dtype | None = None,
             verbose: bool = False) -> pd.DataFrame:
    """The zero_shot and linear_probe suites' rows for `model` on `datasets` (module docstring). `workers`: the
    DataLoader workers decoding image files (None: this machine's cores, at most 8)."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"tasks {unknown}: choose from {', '.join(TASKS)}")
    m = _as_model(model, tokenizer, transform, device)
    if "zero_shot" in tasks and not m.clip_like:
        raise ValueError(f"{type(m.module).__name__} is not CLIP-like (it needs encode_text and a tokenizer: pass "
                         "tokenizer=, or give the module a tokenizer attribute) for zero_shot; "
                         "tasks=('linear_probe',) probes its image tower")
    param = next(m.module.parameters(), None)
    device = torch.device(device) if device is not None else (param.device if param is not None else
                                                              torch.device("cpu"))
    specs = [data_lib.parse(d) for d in ([datasets] if isinstance(datasets, (str, dict)) else datasets)]
    for ds in specs:
        if data_lib.task(ds) != "classification" and ("linear_probe" in tasks):
            raise ValueError(f"data set {ds.name!r} ({data_lib.task(ds)}): the linear probe needs a classification "
                             "set with a training split")
    if workers is None:
        workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    _IMAGES.capacity = int(cache_bytes)
    opts = task_layer.Options(device, batch_size, workers, autocast, seed, None, _IMAGES, _TEXTS, progress=verbose)
    modes = {mod: mod.training for mod in m.module.modules()}
    m.module.eval()
    quiet = (lambda phase, seconds: None) if not verbose else None
    rows = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
                torch.autocast(device.type, enabled=False):
            for ds in specs:
                common = {"model": m.id, "dataset": ds.name}
                for task in tasks:
                    if task == "zero_shot":
                        rows += task_layer.zero_shot_rows([m], ds, opts, common)
                    else:
                        probed = task_layer.probe_rows([m], ds, opts, common, log=quiet)
                        rows += [{**r, "task": "linear probe", "images": r["test_images"]} for r in probed]
    finally:
        for mod, training in modes.items():
            mod.training = training
    _CALLS["evaluations"] += 1
    df = pd.DataFrame([{k: v for k, v in r.items() if k != predictions.KEY} for r in rows])
    if step is not None:
        df.insert(0, "step", step)
    if log is not None:
        _log(log, df, step)
    if verbose:
        print(df.to_string(index=False))
    return df


METRICS = ("top1", "top5", "mean_per_class_recall", "mean_R@1", "image_to_text_R@1", "text_to_image_R@1",
           "main_metric")


def _log(log, df: pd.DataFrame, step: int | None) -> None:
    """Each row's metrics as "<data set>/<task>/<metric>": to a SummaryWriter's add_scalar, or log(dict, step)."""
    metrics = {f"{r['dataset']}/{r['task']}/{k}": float(r[k]) for _, r in df.iterrows() for k in METRICS
               if k in r and pd.notna(r[k])}
    if hasattr(log, "add_scalar"):
        for tag, value in metrics.items():
            log.add_scalar(tag, value, step)
    else:
        log(metrics, step)
