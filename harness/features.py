"""Batched feature extraction with an on-disk cache that survives an interrupted run.

Features are cached under a key of (model id, weights hash, data fingerprint, split, indices, transform,
dtype, harness code). They are written in chunks, each atomically: a killed run keeps every finished
chunk and resumes at the first missing one; a second run with nothing changed reads them all back.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import distributed
from .data import ImageData, ImageDataset, collate
from .results import code_hash, stable_hash


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


def save_atomic(obj, path: Path) -> None:
    """torch.save to a unique temporary file beside `path`, then rename: never half a file, even when two
    processes write the same path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _empty(skipped: list[str]) -> dict:
    """A chunk piece with no readable image."""
    return {"features": np.zeros((0, 0), np.float32), "labels": np.zeros(0, np.int64),
            "indices": np.zeros(0, np.int64), "skipped": skipped}


def _compute(encode, subset, batch_size: int, device, dtype, bar) -> dict:
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, collate_fn=collate, num_workers=0)
    feats, labels, idx, bad = [], [], [], []
    for images, y, rows, errors in loader:
        bad += errors
        if images is not None:
            feats.append(encode(images.to(device, dtype)).float().cpu())
            labels.append(y)
            idx.append(rows)
        bar.update(len(errors) + (0 if images is None else len(images)))
    if not feats:
        return _empty(bad)
    return {"features": torch.cat(feats).numpy(), "labels": torch.cat(labels).numpy(),
            "indices": torch.cat(idx).numpy(), "skipped": bad}


def _merge(parts: list[dict], order: np.ndarray) -> dict:
    """The ranks' pieces of one chunk back into one piece, rows in the order of `order` (data-set rows)."""
    parts = [p for p in parts if len(p["labels"])]
    skipped = sorted(s for p in parts for s in p["skipped"]) if parts else []
    if not parts:
        return _empty(skipped)
    position = {int(row): k for k, row in enumerate(order)}
    rows = np.concatenate([p["indices"] for p in parts])
    sort = np.argsort([position[int(r)] for r in rows], kind="stable")
    return {"features": np.concatenate([p["features"] for p in parts])[sort],
            "labels": np.concatenate([p["labels"] for p in parts])[sort], "indices": rows[sort], "skipped": skipped}


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
) -> Features:
    """encode(images) for the rows `indices` of `data` (all by default), through `transform`, cached when
    `cache_dir` is given (None: compute everything, write nothing)."""
    indices = np.arange(len(data)) if indices is None else np.asarray(indices)
    key = stable_hash({"model": model_id, "weights": weights, "data": data.fingerprint, "split": data.split,
                       "indices": hashlib.sha256(indices.tobytes()).hexdigest(), "transform": repr(transform),
                       "dtype": str(dtype), "code": code_hash("harness.features", "harness.adapters")})
    folder = cache_dir / "features" / key if cache_dir else None
    dataset = ImageDataset(data, transform, indices)
    chunks = [range(s, min(s + chunk_size, len(indices))) for s in range(0, len(indices), chunk_size)]
    parts, skipped, from_cache, computed = [], [], 0, 0
    together = distributed.active()  # every rank is here: shard each chunk's images across the ranks
    bar = tqdm(total=len(indices), desc=desc, unit="img", dynamic_ncols=True, disable=not distributed.is_main())
    for i, chunk in enumerate(chunks):
        path = folder / f"chunk_{i:05d}.pt" if folder else None
        cached = path is not None and path.exists()
        if together:  # rank 0's cache decides (other nodes may not share its disk)
            cached = distributed.broadcast(cached)
        if cached:
            part = torch.load(path, weights_only=False) if distributed.is_main() or not together else None
            part = distributed.broadcast(part) if together else part
            from_cache += 1
            bar.update(len(chunk))
        else:
            if together:
                mine = torch.utils.data.Subset(dataset, chunk[distributed.shard(len(chunk))])
                part = _merge(distributed.all_gather(_compute(encode, mine, batch_size, device, dtype, bar)),
                              indices[chunk.start: chunk.stop])
            else:
                part = _compute(encode, torch.utils.data.Subset(dataset, chunk), batch_size, device, dtype, bar)
            if path is not None and distributed.is_main():
                save_atomic(part, path)
            computed += 1
        parts.append(part)
        skipped += part["skipped"]
    bar.close()
    if skipped:
        warnings.warn(f"{desc}: skipped {len(skipped)} unreadable image(s), e.g. {skipped[:3]}", stacklevel=2)
    parts = [p for p in parts if len(p["labels"])]
    return Features(np.concatenate([p["features"] for p in parts]), np.concatenate([p["labels"] for p in parts]),
                    np.concatenate([p["indices"] for p in parts]), skipped, from_cache, computed)
