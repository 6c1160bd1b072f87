"""Load a declared suite, run its units with a per-unit cache, write its tables.

A suite is a file suites/<name>.py with NAME, VERSION, EVALUATOR (a module under harness.evals) and
get_config(profile) -> dict. An evaluator module provides

    units(config, ctx) -> list[str]              independent pieces of work, each cached on its own
    run_unit(unit, config, ctx) -> list[dict]    flat rows
    tables(rows, config) -> list[Table]          pandas tables built from all the rows

Finished units are saved at once (atomically) under the cache folder, keyed by the suite's config,
version, the source of the evaluator and of every harness module it imports, and the device: an
interrupted run resumes where it stopped, a rerun with nothing changed recomputes nothing, and a change to
code a suite does not use leaves its cache valid.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import results
from .suite import DEFAULT_CACHE, SUITES_DIR, Context, Table, load_suite, suite_names  # noqa: F401

PROFILES = ("default", "full")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch sees no GPU; use --device cpu (or auto)")
    return device


def _unit_file(folder: Path, unit: str) -> Path:
    return folder / (re.sub(r"[^A-Za-z0-9_.=-]+", "_", unit) + ".json")


def run_suite(name: str, profile: str, ctx: Context, out_dir: Path, suites_dir: Path = SUITES_DIR) -> list[Path]:
    """Run every unit of suite `name` (reusing cached units), write its tables into out_dir."""
    if profile not in PROFILES:
        raise SystemExit(f"unknown profile {profile!r}: choose from {', '.join(PROFILES)}")
    suite = load_suite(name, suites_dir)
    config = suite.get_config(profile)
    if ctx.dtypes:
        config = {**config, "dtypes": ctx.dtypes}
    evaluator = importlib.import_module(f"harness.evals.{suite.EVALUATOR}")

    code = results.code_hash(evaluator.__name__)
    key = results.stable_hash({"suite": suite.NAME, "version": suite.VERSION, "config": config, "seed": ctx.seed,
                               "code": code, "device": results.device_name(ctx.device)})
    folder = ctx.cache_dir / "units" / suite.NAME / key
    units = evaluator.units(config, ctx)
    rows: list[dict] = []
    start = time.perf_counter()
    done = 0
    bar = tqdm(units, desc=f"{suite.NAME} [{profile}]", unit="unit", dynamic_ncols=True)
    for unit in bar:
        bar.set_postfix_str(unit)
        path = _unit_file(folder, unit)
        if ctx.use_cache and path.exists():
            rows += json.loads(path.read_text())
            done += 1
            continue
        t0 = time.perf_counter()
        unit_rows = evaluator.run_unit(unit, config, ctx)
        seconds = time.perf_counter() - t0
        for row in unit_rows:
            row.setdefault("unit", unit)
            row.setdefault("unit_seconds", round(seconds, 2))
        if ctx.use_cache:
            results.atomic_write_text(path, json.dumps(unit_rows, default=float))
        rows += unit_rows
    elapsed = time.perf_counter() - start
    if done:
        print(f"{suite.NAME}: reused {done} of {len(units)} finished units from {folder}")

    prov = results.provenance(config, ctx.device, ctx.seed)
    prov.update(suite=suite.NAME, suite_version=suite.VERSION, profile=profile)
    written, index = [], {}
    for table in evaluator.tables(rows, config):
        df = table.df.assign(**{k: v for k, v in prov.items() if k not in table.df})  # a row's own seed stays
        written += results.write_table(df, out_dir, table.name, table.title, table.md_columns, table.notes)
        if table.plot is not None:
            written.append(results.atomic_write_figure(lambda path, t=table, d=df: t.plot(d, path),
                                                       out_dir / f"{table.name}.png"))
        index[table.name] = table.description
    written.append(results.write_index(out_dir, index))
    print(f"{suite.NAME}: {len(rows)} rows in {elapsed:.1f} s -> " + ", ".join(str(p) for p in written))
    return written
