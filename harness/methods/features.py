"""Batched feature extraction with an on-disk cache that survives an interrupted run.

Features are cached under a key of (model id, weights hash, data fingerprint, split, indices, transform,
dtype, autocast, harness code). They are written in chunks, each atomically and in safetensors with a checksum
(harness.infra.cache; no pickle): a killed run keeps every finished chunk and resumes at the first missing one; a
second run with nothing changed reads them all back; a damaged chunk (truncated, empty, of the wrong shape,
written by other code) is reported with a warning naming the file and computed again.

Two input paths, chosen per data set: in-memory images (Fashion-MNIST's uint8 arrays) are transformed a whole
batch at a time as tensors (harness.data.transforms) when the model's preprocessing is one it can batch; image files
are decoded and transformed in DataLoader workers (`workers`), in pinned memory with non-blocking copies on a GPU.
`autocast` (e.g. torch.bfloat16) runs the encoder under torch.autocast.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.images import ImageData, ImageDataset, collate
from ..data.transforms import batched
from ..infra import cache, distributed
from ..infra.results import code_hash, stable_hash


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


def _piece(feats: list[torch.Tensor], labels: list, rows: list, skipped: list[tuple[int, str]]) -> dict:
    """One chunk's features (N, D) float32, labels (N,), data-set rows (N,), and the unreadable images
    (row, "name: error")."""
    if not feats:
        return {"features": np.zeros((0, 0), np.float32), "labels": np.zeros(0, np.int64),
                "indices": np.zeros(0, np.int64), "skipped": skipped}
    return {"features": torch.cat(feats).numpy(), "labels": np.concatenate(labels).astype(np.int64),
            "indices": np.concatenate(rows).astype(np.int64), "skipped": skipped}


def _in_memory_batches(data: ImageData, rows: np.ndarray, transform, batch_size: int) -> Iterator[tuple]:
    """(images, labels, rows, unreadable) a batch at a time, transformed as one tensor."""
    for start in range(0, len(rows), batch_size):
        r = rows[start: start + batch_size]
        yield transform(torch.from_numpy(data.pixels(r))), data.labels[r], r, []


def _file_batches(data: ImageData, rows: np.ndarray, transform, batch_size: int, workers: int, pin: bool):
    """The same from image files, decoded and transformed in `workers` DataLoader worker processes."""
    loader = torch.utils.data.DataLoader(ImageDataset(data, transform, rows), batch_size=batch_size, collate_fn=collate,
                                         num_workers=workers, pin_memory=pin, persistent_workers=False)
    for images, labels, idx, bad in loader:
        yield images, None if labels is None else labels.numpy(), None if idx is None else idx.numpy(), bad


def _compute(encode, batches, device, dtype, autocast, bar) -> dict:
    feats, labels, rows, bad = [], [], [], []
    amp = torch.autocast(device.type, dtype=autocast) if autocast is not None else None
    for images, y, r, errors in batches:
        bad += errors
        if images is not None:
            x = images.to(device, dtype, non_blocking=True)
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
    dtype: torch.dtype = torch.float32,
    batch_size: int = 256,
    chunk_size: int = 4096,
    cache_dir: Path | None = None,
    desc: str = "features",
    workers: int = 0,
    autocast: torch.dtype | None = None,
) -> Features:
    """encode(images) for the rows `indices` of `data` (all by default), through `transform`, cached when
    `cache_dir` is given (None: compute everything, write nothing)."""
    device = torch.device(device)
    indices = np.arange(len(data)) if indices is None else np.asarray(indices)
    fast = batched(transform) if data.in_memory else None  # a whole batch at a time, as tensors
    key = stable_hash({"model": model_id, "weights": weights, "data": data.fingerprint, "split": data.split,
                       "indices": hashlib.sha256(indices.tobytes()).hexdigest(),
                       "transform": repr(fast or transform), "dtype": str(dtype), "autocast": str(autocast),
                       "code": code_hash("harness.methods.features", "harness.models")})
    folder = cache_dir / "features" / key if cache_dir else None
    chunks = [indices[s: s + chunk_size] for s in range(0, len(indices), chunk_size)]
    parts, skipped, from_cache, computed = [], [], 0, 0
    together = distributed.active()  # every rank is here: shard each chunk's images across the ranks
    decides = distributed.is_main() or not together  # together, rank 0's cache decides for every rank
    bar = tqdm(total=len(indices), desc=desc, unit="img", dynamic_ncols=True, disable=not decides)
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
            batches = (_in_memory_batches(data, mine, fast, batch_size) if fast is not None else
                       _file_batches(data, mine, transform, batch_size, workers, pin=device.type == "cuda"))
            part = _compute(encode, batches, device, dtype, autocast, bar)
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
