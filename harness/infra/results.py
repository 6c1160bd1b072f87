"""Rows -> pandas tables -> results/ (CSV + Markdown), with provenance, written atomically."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch

from .cache import atomic_write, atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_sha() -> str:
    """The repository's HEAD commit, with '+dirty' when tracked files differ from it ('unknown' outside git)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "harness", "suites"],
                               cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def device_kind(device: torch.device | str) -> str:
    """"cpu" or the GPU's name: what trained weights depend on (not the thread count, not the GPU index)."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def stable_hash(obj) -> str:
    """Short hash of a JSON-serialisable object, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _module_file(name: str) -> Path | None:
    """The source file of harness module `name` ("harness.evals.agreement"), None if not one of ours."""
    parts = name.split(".")
    if parts[0] != "harness":
        return None
    base = REPO_ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def _imports(name: str, path: Path) -> set[str]:
    """harness modules that the module `name` at `path` imports anywhere in its body (top level or inside a
    function), with the packages above them (whose __init__ runs first)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                else node.module
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from .. import data`
    out = set()
    for mod in found:
        parts = mod.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in out if _module_file(m) is not None}


def code_hash(*modules: str) -> str:
    """Hash of the source of the given harness modules and every harness module they import, transitively
    (all of harness/ when none is given): a cached result is reused only while the code that produced it is
    unchanged, and a change elsewhere in harness/ does not invalidate it. The top-level harness/__init__.py is
    hashed but its imports are not followed: it only re-exports the public API (harness.compare, ...), which a
    suite that does not import those modules never runs."""
    if modules:
        todo, seen = [m for m in modules], set()
        while todo:
            mod = todo.pop()
            if mod in seen or _module_file(mod) is None:
                continue
            seen.add(mod)
            if mod != "harness":
                todo += _imports(mod, _module_file(mod))
        paths = sorted({_module_file(m) for m in seen})
    else:
        paths = sorted((REPO_ROOT / "harness").rglob("*.py"))
    h = hashlib.sha256()
    for path in paths:
        h.update(path.relative_to(REPO_ROOT).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def provenance(config: dict, device: torch.device | str, seed: int) -> dict:
    """Columns every published row carries: how, where and with what it was produced."""
    from .. import __version__

    return {
        "harness_version": __version__,
        "git_sha": git_sha(),
        "torch": torch.__version__,
        "timm": version("timm"),
        "open_clip": version("open_clip_torch"),
        "device": device_name(device),
        "seed": seed,
        "config_hash": stable_hash(config),
        "time_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def atomic_write_figure(draw, path: Path) -> Path:
    """draw(tmp_path) writes a figure; it is renamed into place only once complete."""
    return atomic_write(path, draw)


def _fmt(value) -> str:
    if isinstance(value, float) and value != value:  # NaN: not applicable to this row
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.2e}"
    return str(value)


def to_markdown(df: pd.DataFrame, columns: list[str] | None = None) -> str:
    """A Markdown table of `columns` (all by default), numbers in short form."""
    df = df[columns] if columns else df
    return df.map(_fmt).to_markdown(index=False, disable_numparse=True) + "\n"


def write_table(
    df: pd.DataFrame, out_dir: Path, name: str, title: str, md_columns: list[str] | None = None, notes: str = ""
) -> list[Path]:
    """results/<name>.csv (every column) and results/<name>.md (title, notes, the chosen columns, provenance)."""
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    atomic_write_text(csv_path, df.to_csv(index=False))
    prov_cols = [c for c in ("harness_version", "git_sha", "torch", "timm", "open_clip", "device", "seed",
                             "config_hash") if c in df.columns]
    prov = df[prov_cols].drop_duplicates() if prov_cols else pd.DataFrame()
    md = f"# {title}\n\n"
    md += f"{notes.strip()}\n\n" if notes else ""
    md += to_markdown(df, md_columns)
    if not prov.empty:
        md += "\nProduced by:\n\n" + to_markdown(prov)
    md += f"\nEvery column, provenance included, is in [{csv_path.name}]({csv_path.name}).\n"
    atomic_write_text(md_path, md)
    return [csv_path, md_path]


GUARANTEES = """## What a run guarantees (and the tests that hold it to it)

- **Atomic tables**: every file here is written to a temporary file and renamed into place; a suite's tables and
  this index are written under one lock, so two runs sharing results/ never interleave them.
- **Resumable runs**: each finished unit (a model, a training run) and each chunk of features is cached at once;
  a killed run resumes at the first unfinished one and the resumed tables equal an uninterrupted run's
  (tests/test_faults.py: SIGKILLs after the 2nd, 4th and 6th of 10 units, then a resume: same tables); the
  temporary file of a write cut short is removed by the next holder of that entry's lock.
- **Safe concurrent runs**: two runs sharing one cache and one results/ folder: the second waits for a unit the
  first is computing and reads it; every unit is computed once and both tables equal a single run's (2 runs at once).
- **Damaged cache entries detected**: sizes and a sha256 are recorded with every entry; a truncated, empty,
  wrong-shaped, bit-flipped, foreign or poisoned file is reported with a warning naming it and recomputed, never
  loaded silently and never fatal (6 kinds of damage on feature chunks; a truncated and a poisoned unit file and
  checkpoint).
- **No cache file runs code**: the cache holds safetensors and JSON only; a pickle put in it is treated as damage
  (the tests check that its payload never runs). Trained checkpoints the same.
- **Bad input refused before any work starts**, with the problem and the fix named: an unknown dtype, model (with
  the closest names), profile or config key, a weight file for another architecture or one that is not weights-only,
  an ImageFolder with a missing split or a class folder outside ImageNet's class list (8 inputs). Images in CMYK, P,
  LA or I;16 are converted, not skipped; one past Pillow's decompression-bomb limit is skipped and named with the fix.
- **No NaN from a diverging run**: a NaN or infinite training loss stops the run with the run and the step named;
  no table is written.
""".splitlines()


def write_index(out_dir: Path, entries: dict[str, str]) -> Path:
    """results/README.md: one line per table (name -> description), merged with what is already listed."""
    out_dir = Path(out_dir)
    index_json = out_dir / ".index.json"
    known = json.loads(index_json.read_text()) if index_json.exists() else {}
    known.update(entries)
    known = {k: v for k, v in known.items() if (out_dir / f"{k}.csv").exists()}
    atomic_write_text(index_json, json.dumps(known, indent=1, sort_keys=True) + "\n")
    lines = ["# Results", "",
             "Every table here is written by `nox -s eval` (or `python -m harness run SUITE`) or `nox -s bench`",
             "(`python -m harness bench`) from the code in this repository; each row carries the git sha, library",
             "versions, device, dtype, seed and config hash.", "",
             "| table | what it holds |", "|---|---|"]
    lines += [f"| [{k}]({k}.md) ([csv]({k}.csv)) | {v} |" for k, v in sorted(known.items())]
    files = sorted((out_dir / "predictions").rglob("*.parquet"))
    if files:  # harness.infra.predictions: each classification row's per-image predictions
        lines += ["", f"Per-image predictions: [predictions/](predictions/), {len(files)} parquet files, "
                      f"{sum(p.stat().st_size for p in files) / 1e6:.2f} MB, one per classification row (named in "
                      "its table's `predictions` column): image index, label, top-5 classes, score margin. "
                      "`python -m harness diff A B` compares two result folders image by image."]
    lines += ["", *GUARANTEES]
    path = out_dir / "README.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
