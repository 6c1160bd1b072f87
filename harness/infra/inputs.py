"""What a computation read from disk, fingerprinted, so that nothing cached answers for files it did not see.

    fingerprint(path)        a file, or every file under a folder: (relative path, size, mtime_ns, ctime_ns) hashed.
                             A file rewritten in place — even to the same size, even by a writer that puts the old
                             modification time back (cp -p, tar, rsync -t: the kernel still moves ctime) — gets a
                             new fingerprint; a file merely read does not.
    with recording() as r:   every fingerprint() taken inside the block is noted in r ({path: fingerprint})
    changed(recorded)        the paths of a recording whose fingerprint is no longer the same (or that are gone)

The data loaders (harness.data) and the weight loaders (harness.models) take their fingerprints through here, so
the runner can keep, beside a finished unit, the fingerprints of every file the unit read, and compute the unit
again when one of them changed (harness.run.runner). Feature-cache keys hold the same fingerprints.

What a stat cannot see: a file changed by a writer that restores both times (impossible without root: ctime is set
by the kernel) or a file system that does not keep them (some network mounts keep whole seconds: a rewrite within
the same second at the same size is not seen there).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

_ACTIVE: list[dict[str, str]] = []  # the recordings open now (nested: each notes every read)


def _stat(p: Path, rel: str) -> str:
    s = p.stat()
    return f"{rel}:{s.st_size}:{s.st_mtime_ns}:{s.st_ctime_ns}"


def fingerprint(path: str | os.PathLike, note: bool = True) -> str:
    """A 16-hex-digit fingerprint of a file or of every file under a folder (module docstring); noted in the
    recordings open now unless note=False. A path that does not exist fingerprints as "missing"."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            if f.is_file():
                h.update(_stat(f, f.relative_to(p).as_posix()).encode())
    elif p.exists():
        h.update(_stat(p, p.name).encode())
    else:
        return "missing"
    value = h.hexdigest()[:16]
    if note:
        for r in _ACTIVE:
            r[str(p.resolve())] = value
    return value


def files_fingerprint(files: list[Path], base: Path) -> str:
    """One fingerprint of a list of files (a manifest's images), each named relative to `base` where it can be;
    every file noted in the recordings open now."""
    h = hashlib.sha256()
    for f in files:
        f = Path(f)
        rel = f.relative_to(base).as_posix() if f.is_relative_to(base) else str(f)
        h.update(f"{rel}:{fingerprint(f)}".encode())
    return h.hexdigest()[:16]


def note(recorded: dict[str, str]) -> None:
    """Put fingerprints taken earlier ({path: fingerprint}, an ImageData's sources) in the recordings open now."""
    for r in _ACTIVE:
        r.update(recorded)


@contextlib.contextmanager
def recording() -> Iterator[dict[str, str]]:
    """{resolved path: fingerprint} of every fingerprint() taken inside the block."""
    r: dict[str, str] = {}
    _ACTIVE.append(r)
    try:
        yield r
    finally:
        del _ACTIVE[next(i for i, x in enumerate(_ACTIVE) if x is r)]  # by identity: equal dicts are not the same


def changed(recorded: dict[str, str]) -> list[str]:
    """The paths of `recorded` whose fingerprint differs now (a vanished file included)."""
    return [path for path, value in recorded.items() if fingerprint(path, note=False) != value]
