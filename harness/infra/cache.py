"""The harness's own files on disk — cached units, feature chunks, trained checkpoints, tables — written so that
nothing is half-written, two runs can share them, and reading one back never runs code.

- Formats, never pickle: tensors go into safetensors files (raw little-endian arrays behind a JSON header),
  with a JSON metadata string and a sha256 over every tensor's bytes and the metadata in that header; rows go
  into JSON files wrapped with their own sha256. A cache folder may be shared between machines and users: a file
  in it is data, and a file that is not what it claims to be — truncated, empty, of the wrong shape, written by
  other code, or a pickle put there by someone — is a damaged entry: `read_*` raise DamagedEntry, callers warn
  (naming the file) and recompute.
- Atomic: every file is written to a unique temporary file beside its path and renamed into place.
- Concurrency: `lock(path)` holds an advisory lock (fcntl.flock on `path.lock`) while an entry is computed, so
  that a second run sharing the cache waits for the first and then reads its result instead of redoing it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

FORMAT = "vitclip-harness/1"


class DamagedEntry(ValueError):
    """A cache file that cannot be trusted: the caller warns and recomputes it."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """write(tmp) fills a unique temporary file beside `path`, which is then renamed into place: readers see the
    old file or the new one, never half of one, also when two processes write the same path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _digest(tensors: dict[str, torch.Tensor], meta: str) -> str:
    h = hashlib.sha256(meta.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _as_tensor(value) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
    return t.detach().cpu().contiguous().clone()  # safetensors refuses tensors that share memory


def save_tensors(path: Path, tensors: dict[str, torch.Tensor | np.ndarray], meta: dict | None = None) -> Path:
    """Tensors (or numpy arrays) and JSON metadata in one safetensors file, with their checksum, atomically."""
    from safetensors.torch import save

    tensors = {k: _as_tensor(v) for k, v in tensors.items()}
    meta_json = json.dumps(meta or {}, sort_keys=True, default=str)
    header = {"format": FORMAT, "meta": meta_json, "sha256": _digest(tensors, meta_json)}
    return atomic_write_bytes(path, save(tensors, metadata=header))


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a file written by save_tensors, or DamagedEntry saying why it cannot be trusted."""
    from safetensors.torch import load

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DamagedEntry(f"{path}: unreadable ({e})") from e
    if not data:
        raise DamagedEntry(f"{path}: empty file")
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8: 8 + n]).get("__metadata__") or {}
        tensors = load(data)
    except Exception as e:  # safetensors' own error, or a header that is not JSON: not a safetensors file
        raise DamagedEntry(f"{path}: not a complete safetensors file ({type(e).__name__}: {e})") from None
    if header.get("format") != FORMAT:
        raise DamagedEntry(f"{path}: written by other code (format {header.get('format')!r}, expected {FORMAT!r})")
    if _digest(tensors, header.get("meta", "")) != header.get("sha256"):
        raise DamagedEntry(f"{path}: checksum mismatch (the file changed after it was written)")
    return tensors, json.loads(header["meta"])


def _rows_digest(body: str, inputs: dict) -> str:
    return hashlib.sha256((body + json.dumps(inputs, sort_keys=True)).encode()).hexdigest()


def save_rows(path: Path, rows: list[dict], inputs: dict[str, str] | None = None) -> Path:
    """A finished unit's rows, and the fingerprints of the files it read (harness.infra.inputs), with a checksum."""
    body = json.dumps(rows, default=float)  # key order kept: a table's columns come out as the evaluator made them
    inputs = dict(inputs or {})
    wrapped = {"format": FORMAT, "sha256": _rows_digest(body, inputs), "rows": json.loads(body), "inputs": inputs}
    return atomic_write_text(path, json.dumps(wrapped))


def read_unit(path: Path) -> tuple[list[dict], dict[str, str]]:
    """(rows, the fingerprints of the files they were computed from) of a file save_rows wrote."""
    path = Path(path)
    try:
        wrapped = json.loads(path.read_text())
        rows, inputs = wrapped["rows"], wrapped.get("inputs", {})
        ok = wrapped.get("format") == FORMAT and isinstance(rows, list) and isinstance(inputs, dict)
        body = json.dumps(rows, default=float)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DamagedEntry(f"{path}: not a complete rows file ({type(e).__name__}: {e})") from None
    if not ok or _rows_digest(body, inputs) != wrapped.get("sha256"):
        raise DamagedEntry(f"{path}: checksum mismatch or written by other code")
    return rows, inputs


def read_rows(path: Path) -> list[dict]:
    return read_unit(path)[0]


def damaged(error: DamagedEntry) -> None:
    """Report a damaged entry; the caller recomputes it."""
    warnings.warn(f"damaged cache entry, recomputing it: {error}", stacklevel=3)


def temporaries(path: Path) -> list[Path]:
    """The temporary files atomic_write leaves beside `path` when its writer is killed mid-write."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.stem}.*.tmp{path.suffix}")) if path.parent.is_dir() else []


@contextlib.contextmanager
def lock(path: Path, what: str = "", wait: bool = True) -> Iterator[bool]:
    """Hold the advisory lock of `path` (the file `path.lock`); another process holding it is waited for, or with
    wait=False not: the context then yields False and holds nothing. Whoever writes `path` holds its lock, so the
    temporaries of `path` found once it is held were left by a writer that was killed: they are removed."""
    lock_path = Path(path).with_name(Path(path).name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = True
        except BlockingIOError:
            if wait:
                print(f"waiting for another run to finish {what or path} ...", file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
                held = True
        if held:
            for stale in temporaries(Path(path)):
                stale.unlink(missing_ok=True)
        yield held
    finally:
        if held:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
