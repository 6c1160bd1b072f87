"""Image features: the one path from a data set's images to a model's features, for every suite and for
harness.evaluate — decoded images kept in memory within a bound, features cached on disk, resumable.

    extract(encode, data, preprocess, indices=..., model_id=..., weights=..., device=..., cache_dir=..., store=...)

The images of `indices` are read a chunk (4,096 images) at a time:
  1. on disk (cache_dir): a chunk of features already computed for this model's weights, these images and this
     preprocessing is read back (safetensors with a checksum, harness.infra.cache; no pickle). A killed run keeps
     every finished chunk and resumes at the first missing one; a damaged chunk (truncated, empty, of the wrong
     shape, written by other code) is reported with a warning naming the file and computed again.
  2. in memory (store, an ImageStore): the chunk's decoded images, kept from an earlier call (harness.evaluate in a
     training loop: the weights change, the images do not). Kept as uint8 after the geometry (resize, crop) —
     ToTensor's division and Normalize run on the device (harness.data.transforms.preprocess) — and only while the
     whole set fits the store's bound; a set larger than the bound is streamed batch by batch on every call, so
     memory stays within the bound plus a few batches.
  3. else decoded: in-memory images (Fashion-MNIST's uint8 arrays) a whole batch at a time as tensors, image files
     in DataLoader workers (`workers`), in pinned memory with non-blocking copies on a GPU.
The encoder then runs on the device, its input in the model's own dtype (`input_dtype`) or float32 under
`autocast` (e.g. torch.bfloat16).

Every key is content: the model's weights hash, the data set's files, labels and class names (ImageData.identity),
the rows, and what the preprocessing computes (harness.data.transforms.describe: its parameters, never its repr or
address). A preprocessing that cannot be described (a Lambda, a user's object) is computed every time and nothing
of it is kept, on disk or in memory.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.images import ImageData, ImageDataset, collate
from ..data.transforms import Preprocess, preprocess
from ..infra import cache, distributed
from ..infra.results import code_hash, stable_hash

COUNTS = {"decoded_images": 0}  # images decoded by this process (tests count them: harness.evaluation.counters)


@dataclass
class Features:
    features: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64
    indices: np.ndarray  # (N,) row of each feature in the data set
    skipped: list[str]  # unreadable images, "name: error"
    from_cache: int  # chunks read back from the cache
    computed: int  # chunks computed in this run


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 of every tensor in the state_dict (names, shapes, bytes): identifies the weights."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ decoded images
@dataclass
class Decoded:
    """The decoded images of some rows: uint8 after the geometry (or the transform's floats), labels, rows kept,
    and the unreadable ones as (row, "name: error")."""

    images: torch.Tensor
    labels: np.ndarray
    rows: np.ndarray
    skipped: list[tuple[int, str]]

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()


class ImageStore:
    """Decoded images kept in memory between calls, least recently used out first, within `capacity` bytes."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.entries: OrderedDict[str, Decoded] = OrderedDict()

    @property
    def nbytes(self) -> int:
        return sum(d.nbytes for d in self.entries.values())

    def get(self, key: str | None) -> Decoded | None:
        if key is None or key not in self.entries:
            return None
        self.entries.move_to_end(key)
        return self.entries[key]

    def put(self, key: str | None, decoded: Decoded) -> None:
        if key is None or decoded.nbytes > self.capacity:
            return
        self.entries[key] = decoded
        self.entries.move_to_end(key)
        while self.nbytes > self.capacity:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()


def _in_memory_batches(data: ImageData, rows: np.ndarray, pre: Preprocess, batch_size: int) -> Iterator[tuple]:
    """(uint8 images, labels, rows, unreadable) a batch at a time, the geometry run on the whole batch."""
    for start in range(0, len(rows), batch_size):
        r = rows[start: start + batch_size]
        yield pre.batch.geometry(torch.from_numpy(data.pixels(r))), data.labels[r], r, []


def _file_batches(data: ImageData, rows: np.ndarray, pre: Preprocess, batch_size: int, workers: int, pin: bool):
    """The same from image files, decoded in `workers` DataLoader worker processes: uint8 after the geometry, or the
    whole transform's output where it does not split."""
    step = pre.geometry if pre.geometry is not None else pre.transform
    workers = workers if len(rows) > batch_size else 0  # one batch: worker processes cost more than they save
    loader = torch.utils.data.DataLoader(ImageDataset(data, step, rows, raw=pre.raw), batch_size=batch_size,
                                         collate_fn=collate, num_workers=workers, pin_memory=pin,
                                         persistent_workers=False)
    for images, labels, idx, bad in loader:
        yield images, None if labels is None else labels.numpy(), None if idx is None else idx.numpy(), bad


def _decode(data: ImageData, rows: np.ndarray, pre: Preprocess, batch_size: int, workers: int,
            pin: bool) -> Iterator[tuple]:
    COUNTS["decoded_images"] += len(rows)
    if data.in_memory and pre.batch is not None:
        return _in_memory_batches(data, rows, pre, batch_size)
    return _file_batches(data, rows, pre, batch_size, workers, pin)


def _collected(batches) -> Decoded:
    images, labels, rows, bad = [], [], [], []
    for x, y, r, errors in batches:
        bad += errors
        if x is not None:
            images.append(x)
            labels.append(y)
            rows.append(r)
    if not images:
        return Decoded(torch.empty(0, dtype=torch.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64), bad)
    return Decoded(torch.cat(images), np.concatenate(labels), np.concatenate(rows), bad)


def image_batches(data: ImageData, rows: np.ndarray, pre: Preprocess, *, batch_size: int, workers: int = 0,
                  pin: bool = False, store: ImageStore | None = None, total: int | None = None) -> Iterator[tuple]:
    """(images, labels, rows, unreadable) of `rows` a batch at a time: from the store when it holds them, else
    decoded, and then kept in the store when the whole set (`total` images, these rows by default) fits it."""
    key = None
    if store is not None and pre.key is not None:
        key = stable_hash({"data": data.identity, "rows": hashlib.sha256(np.ascontiguousarray(rows, np.int64)
                                                                           .tobytes()).hexdigest(),
                           "preprocess": pre.key, "raw": pre.raw})
    kept = store.get(key) if store is not None else None
    if kept is None:
        batches = _decode(data, rows, pre, batch_size, workers, pin)
        if key is None:
            yield from batches
            return
        first = next(batches, None)
        if first is None:
            return
        per_image = first[0][0].numel() * first[0].element_size() if first[0] is not None and len(first[0]) else 0
        if per_image * (total or len(rows)) > store.capacity:  # too large to keep: streamed, every call
            _warn_streamed(data, per_image * (total or len(rows)), store.capacity)
            yield first
            yield from batches
            return
        kept = _collected([first, *batches])
        store.put(key, kept)
    for start in range(0, max(len(kept.rows), 1), batch_size):
        errors = kept.skipped if start == 0 else []
        if len(kept.rows):
            yield (kept.images[start: start + batch_size], kept.labels[start: start + batch_size],
                   kept.rows[start: start + batch_size], errors)
        else:
            yield None, None, None, errors


_WARNED: set[tuple] = set()


def _warn_streamed(data: ImageData, nbytes: int, capacity: int) -> None:
    key = (data.name, data.split, nbytes, capacity)
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"{data.name} ({data.split}): {nbytes / 1e6:,.2f} MB of decoded images exceed the "
                      f"{capacity / 1e6:,.2f} MB kept in memory: they are decoded again on every call, batch by "
                      "batch (raise cache_bytes, or give the data set a test_per_class subset)", stacklevel=4)


# ------------------------------------------------------------------------------------------ features on disk
def _piece(feats: list[torch.Tensor], labels: list, rows: list, skipped: list[tuple[int, str]]) -> dict:
    """One chunk's features (N, D) float32, labels (N,), data-set rows (N,), and the unreadable images
    (row, "name: error")."""
    if not feats:
        return {"features": np.zeros((0, 0), np.float32), "labels": np.zeros(0, np.int64),
                "indices": np.zeros(0, np.int64), "skipped": skipped}
    return {"features": torch.cat(feats).numpy(), "labels": np.concatenate(labels).astype(np.int64),
            "indices": np.concatenate(rows).astype(np.int64), "skipped": skipped}


def _compute(encode, batches, pre: Preprocess, device, input_dtype, autocast, bar) -> dict:
    feats, labels, rows, bad = [], [], [], []
    amp = torch.autocast(device.type, dtype=autocast) if autocast is not None else None
    for images, y, r, errors in batches:
        bad += errors
        if images is not None:
            x = images.to(device, non_blocking=True)
            if pre.finish is not None:
                x = pre.finish(x)
            x = x.to(input_dtype)
            if amp is not None:
                with amp:
                    out = encode(x)
            else:
                out = encode(x)
            feats.append(out.float().cpu())
            labels.append(y)
            rows.append(r)
        bar.update(len(errors) + (0 if images is None else len(images)))
    return _piece(feats, labels, rows, bad)


def _merge(parts: list[dict], order: np.ndarray) -> dict:
    """The ranks' pieces of one chunk back into one piece, rows in the order of `order` (data-set rows)."""
    skipped = sorted(s for p in parts for s in p["skipped"])
    parts = [p for p in parts if len(p["labels"])]
    if not parts:
        return _piece([], [], [], skipped)
    position = {int(row): k for k, row in enumerate(order)}
    rows = np.concatenate([p["indices"] for p in parts])
    sort = np.argsort([position[int(r)] for r in rows], kind="stable")
    return {"features": np.concatenate([p["features"] for p in parts])[sort],
            "labels": np.concatenate([p["labels"] for p in parts])[sort], "indices": rows[sort], "skipped": skipped}


def _save_chunk(path: Path, part: dict) -> None:
    cache.save_tensors(path, {"features": part["features"], "labels": part["labels"], "indices": part["indices"],
                              "skipped_rows": np.array([r for r, _ in part["skipped"]], np.int64)},
                       {"skipped": [m for _, m in part["skipped"]]})


def _read_chunk(path: Path, rows: np.ndarray) -> dict:
    """A cached chunk, checked against what it must hold: every row of `rows` once, as a feature or as an
    unreadable image, in order; DamagedEntry otherwise."""
    t, meta = cache.read_tensors(path)
    try:
        features, labels, indices = t["features"].numpy(), t["labels"].numpy(), t["indices"].numpy()
        skipped_rows = t["skipped_rows"].numpy()
        messages = meta["skipped"]
    except KeyError as e:
        raise cache.DamagedEntry(f"{path}: lacks {e} (written by other code)") from None
    ok = (features.ndim == 2 and features.dtype == np.float32 and len(features) == len(labels) == len(indices)
          and len(skipped_rows) == len(messages)
          and np.array_equal(np.sort(np.concatenate([indices, skipped_rows])), np.sort(rows))
          and np.array_equal(indices, rows[np.isin(rows, indices)]))
    if not ok:
        raise cache.DamagedEntry(f"{path}: holds features {tuple(features.shape)} for rows that are not this chunk's "
                                 f"{len(rows)} images")
    return {"features": features, "labels": labels, "indices": indices,
            "skipped": list(zip(skipped_rows.tolist(), messages))}


def extraction_options(config: dict) -> dict:
    """extract()'s batch_size, workers and autocast from a suite config ("autocast": "bfloat16" or absent)."""
    from .numerics import dtype_of

    autocast = config.get("autocast")
    return {"batch_size": config.get("batch_size", 256), "workers": config.get("workers", 0),
            "autocast": dtype_of(autocast) if autocast else None}


@torch.no_grad()
def extract(
    encode: Callable[[torch.Tensor], torch.Tensor],
    data: ImageData,
    transform,
    *,
    model_id: str,
    weights: str,
    indices: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    input_dtype: torch.dtype = torch.float32,
    batch_size: int = 256,
    chunk_size: int = 4096,
    cache_dir: Path | None = None,
    store: ImageStore | None = None,
    desc: str = "features",
    workers: int = 0,
    autocast: torch.dtype | None = None,
    progress: bool = True,
) -> Features:
    """encode(images) for the rows `indices` of `data` (all by default), through `transform` (a model's
    preprocessing, or its Preprocess), cached on disk when `cache_dir` is given and its decoded images kept in
    `store` when one is given (module docstring)."""
    device = torch.device(device)
    pre = transform if isinstance(transform, Preprocess) else preprocess(transform)
    indices = np.arange(len(data)) if indices is None else np.asarray(indices)
    key = None
    if cache_dir is not None and pre.key is not None:
        key = stable_hash({"model": model_id, "weights": weights, "data": data.identity,
                           "indices": hashlib.sha256(indices.tobytes()).hexdigest(), "preprocess": pre.key,
                           "raw": pre.raw, "dtype": str(input_dtype), "autocast": str(autocast),
                           "code": code_hash("harness.methods.features", "harness.models")})
    folder = cache_dir / "features" / key if key else None
    chunks = [indices[s: s + chunk_size] for s in range(0, len(indices), chunk_size)]
    parts, skipped, from_cache, computed = [], [], 0, 0
    together = distributed.active()  # every rank is here: shard each chunk's images across the ranks
    decides = distributed.is_main() or not together  # together, rank 0's cache decides for every rank
    bar = tqdm(total=len(indices), desc=desc, unit="img", dynamic_ncols=True, disable=not (decides and progress))
    for i, rows in enumerate(chunks):
        path = folder / f"chunk_{i:05d}.safetensors" if folder else None
        part = None
        if path is not None and path.exists() and decides:
            try:
                part = _read_chunk(path, rows)
                if parts and len(part["labels"]) and part["features"].shape[1] != parts[-1]["features"].shape[1]:
                    raise cache.DamagedEntry(f"{path}: features of dimension {part['features'].shape[1]}, other "
                                             f"chunks {parts[-1]['features'].shape[1]}")
            except cache.DamagedEntry as e:
                cache.damaged(e)
                part = None
        if together:
            part = distributed.broadcast(part)
        if part is not None:
            from_cache += 1
            bar.update(len(rows))
        else:
            mine = rows[distributed.shard(len(rows))] if together else rows
            batches = image_batches(data, mine, pre, batch_size=batch_size, workers=workers,
                                    pin=device.type == "cuda", store=store, total=len(indices))
            part = _compute(encode, batches, pre, device, input_dtype, autocast, bar)
            if together:
                part = _merge(distributed.all_gather(part), rows)
            if path is not None and decides:
                _save_chunk(path, part)
            computed += 1
        if len(part["labels"]):
            parts.append(part)
        skipped += [message for _, message in part["skipped"]]
    bar.close()
    if skipped:
        warnings.warn(f"{desc}: skipped {len(skipped)} unreadable image(s), e.g. {skipped[:3]}", stacklevel=2)
    parts = parts or [_piece([], [], [], [])]  # no readable image at all: empty arrays, the skipped named above
    return Features(np.concatenate([p["features"] for p in parts]), np.concatenate([p["labels"] for p in parts]),
                    np.concatenate([p["indices"] for p in parts]), skipped, from_cache, computed)
