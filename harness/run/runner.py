"""Load a declared suite, run its units with a per-unit cache, write its tables.

A suite is a file suites/<name>.py with NAME, VERSION, EVALUATOR (a module under harness.evals) and
get_config(profile) -> dict. An evaluator module provides

    units(config, ctx) -> list[str]              independent pieces of work, each cached on its own
    run_unit(unit, config, ctx) -> list[dict]    flat rows
    tables(rows, config) -> list[Table]          pandas tables built from all the rows

and optionally validate(config, ctx) (checks before any work), unit_cost(unit, config) (a rough cost in
seconds, used only to start long units first when several processes share one pool of units: run_pooled),
PARALLEL ("units" or "data", how torchrun splits it) and CPU_PROCESSES (split into one-thread processes on a CPU).

Finished units are saved at once (atomically) under the cache folder, keyed by the suite's config,
version, the source of the evaluator and of every harness module it imports, and the device: an
interrupted run resumes where it stopped, a rerun with nothing changed recomputes nothing, and a change to
code a suite does not use leaves its cache valid.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import importlib.util
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..infra import cache, distributed, inputs, predictions, results
from ..infra.suite import DEFAULT_CACHE, ConfigError, Context, Failure, Table  # noqa: F401  (the run's protocol)
from . import suites, sweeps
from .suites import PROFILES, SUITES_DIR, apply_overrides, load_suite, overrides_for, suite_names  # noqa: F401


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no GPU; use --device cpu (or auto)")
    return device


def _unit_file(folder: Path, unit: str) -> Path:
    return folder / (re.sub(r"[^A-Za-z0-9_.=-]+", "_", unit) + ".json")


class UnitFailed(RuntimeError):
    """A unit raised: the run stops, no table is written, finished units stay cached."""


def _run_one(evaluator, unit: str, config: dict, ctx: Context, path: Path, write: bool) -> list[dict]:
    t0 = time.perf_counter()
    try:
        with inputs.recording() as read:  # every file the unit reads: a rerun checks them (_cached)
            unit_rows = evaluator.run_unit(unit, config, ctx)
    except Exception as e:
        where = f"rank {distributed.rank()} of {distributed.world_size()}: " if distributed.world_size() > 1 else ""
        raise UnitFailed(f"{where}unit {unit!r} failed ({type(e).__name__}: {e}). No table was written; the "
                         f"units finished before it are cached under {path.parent} and a rerun reuses them.") from e
    seconds = time.perf_counter() - t0
    for row in unit_rows:
        row.setdefault("unit", unit)
        row.setdefault("unit_seconds", round(seconds, 2))
    if ctx.use_cache and write:
        cache.save_rows(path, unit_rows, read)
    return unit_rows


def _cached(path: Path) -> list[dict] | None:
    """A finished unit's rows, or None: not there, damaged (warned about), or computed from a file that has changed
    since — a checkpoint overwritten in place, an image rewritten, a class-name file edited (said on stderr): the
    unit runs again."""
    if not path.exists():
        return None
    try:
        rows, read = cache.read_unit(path)
    except cache.DamagedEntry as e:
        cache.damaged(e)
        return None
    moved = inputs.changed(read)
    if moved:
        import sys

        print(f"{path.stem}: {len(moved)} file(s) it read changed since it was computed (e.g. {moved[0]}): "
              "computing it again", file=sys.stderr, flush=True)
        return None
    return rows


@dataclass(frozen=True)
class Job:
    """One unit of one suite, and where its finished rows are kept."""

    evaluator: ModuleType
    config: dict
    unit: str
    folder: Path


def _run_units(jobs: list[Job], ctx: Context, mode: str, desc: str) -> tuple[dict[int, list[dict]], set[int]]:
    """Every job's rows by job index (on rank 0; see harness.infra.distributed for the parallel modes), and the indices
    that came from the cache. Each unit runs under its cache entry's lock: a second run sharing the cache waits for
    a unit the first is computing, then reads it. In "units" mode with a cache, the ranks claim units as they go (a
    rank skips a unit another holds), so long and short units balance over the ranks."""
    rank, world = distributed.rank(), distributed.world_size()
    claim = mode == "units" and ctx.use_cache
    mine = [i for i in range(len(jobs)) if mode != "units" or claim or i % world == rank]
    by_unit: dict[int, list[dict]] = {}
    reused: set[int] = set()
    bar = tqdm(mine, desc=desc + (f" rank {rank}/{world}" if world > 1 else ""), unit="unit", dynamic_ncols=True,
               disable=mode == "data" and rank != 0)
    for i in bar:
        job = jobs[i]
        bar.set_postfix_str(job.unit)
        path = _unit_file(job.folder, job.unit)
        decides = ctx.use_cache and (rank == 0 or mode != "data")  # in data mode rank 0's cache decides
        locked = cache.lock(path, f"unit {job.unit!r}", wait=not claim) if decides else contextlib.nullcontext(True)
        with locked as held:
            if not held:
                continue  # another rank (or another run) is computing it
            cached = _cached(path) if decides else None
            hit = distributed.broadcast(cached is not None) if mode == "data" else cached is not None
            if hit:
                by_unit[i] = cached or []  # other ranks of a data-parallel run hold no rows; rank 0 writes
                reused.add(i)
                continue
            if mode == "data":
                with distributed.data_parallel():
                    by_unit[i] = _run_one(job.evaluator, job.unit, job.config, ctx, path, write=rank == 0)
            else:
                by_unit[i] = _run_one(job.evaluator, job.unit, job.config, ctx, path, write=True)
    if mode == "units":  # rank 0 collects every rank's units
        gathered = distributed.all_gather((by_unit, reused))
        computed = {i for part, r in gathered for i in part if i not in r}
        reused = {i for _, r in gathered for i in r} - computed
        by_unit = {i: rows for part, _ in gathered for i, rows in part.items()}
        for i in sorted(set(range(len(jobs))) - set(by_unit)):  # held by another run meanwhile: wait, then read
            job = jobs[i]
            path = _unit_file(job.folder, job.unit)
            with cache.lock(path, f"unit {job.unit!r}"):
                rows = _cached(path)
                by_unit[i] = rows if rows is not None else _run_one(job.evaluator, job.unit, job.config, ctx, path,
                                                                    True)
                if rows is not None:
                    reused.add(i)
    return by_unit, reused


@dataclass
class Prepared:
    """A suite ready to run: its module, its config (profile, --dtype and overrides applied), its evaluator."""

    suite: ModuleType
    profile: str
    config: dict
    evaluator: ModuleType


def prepare(name: str, profile: str, ctx: Context, assignments: dict | None = None,
            suites_dir: Path = SUITES_DIR) -> Prepared:
    """Load suite `name` and resolve its config; every problem that can be found without doing the work (an
    unknown suite, profile, config key, dtype, model, weight file, data folder) is raised here, as ConfigError."""
    suite = load_suite(name, suites_dir)
    config = suites.config(suite, profile)
    if ctx.suite_config is None:  # the models a suite trains are built from that suite's default config
        ctx.suite_config = functools.partial(suites.default_config, suites_dir=suites_dir)
    if ctx.dtypes:
        config = with_dtypes(suite, config, ctx.dtypes)
    config = apply_overrides(config, overrides_for(suite.NAME, config, assignments or {}), suite.NAME)
    config = sweeps.expand(config)  # a model entry naming several checkpoints: one entry per checkpoint
    # an evaluator under harness.evals by its short name, or any importable module by its dotted path
    evaluator = importlib.import_module(suite.EVALUATOR if "." in suite.EVALUATOR else
                                        f"harness.evals.{suite.EVALUATOR}")
    if hasattr(evaluator, "validate"):
        evaluator.validate(config, ctx)
    return Prepared(suite, profile, config, evaluator)


def with_dtypes(suite: ModuleType, config: dict, dtypes: list[str]) -> dict:
    """--dtype: the dtypes a suite with a "dtypes" list runs (agreement); for a suite that names models, the dtype
    every model it names is loaded in (one; a declaration's own dtype stays); ConfigError for another suite."""
    if "dtypes" in config:
        return {**config, "dtypes": dtypes}
    keys = getattr(suite, "MODEL_KEYS", [])
    if not keys:
        raise ConfigError(f"suite {suite.NAME} names no models and no dtypes: --dtype does not apply to it")
    if len(set(dtypes)) > 1:
        raise ConfigError(f"suite {suite.NAME}: --dtype names one dtype for its models (given {', '.join(dtypes)}); "
                          "a model declared twice with its own \"dtype\" runs in both")
    config = copy.deepcopy(config)
    for key in keys:
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node.get(part, {})
        if isinstance(node.get(last), list):
            node[last] = [m if isinstance(m, dict) and "dtype" in m else
                          {**(m if isinstance(m, dict) else {"model": m}), "dtype": dtypes[0]} for m in node[last]]
    return config


def run_suite(name: str, profile: str, ctx: Context, out_dir: Path, suites_dir: Path = SUITES_DIR,
              assignments: dict | None = None) -> list[Path]:
    """Run every unit of suite `name` (reusing cached units), write its tables into out_dir."""
    return run_prepared(prepare(name, profile, ctx, assignments, suites_dir), ctx, out_dir)


def _jobs(prepared: Prepared, ctx: Context) -> list[Job]:
    """The suite's units, each with the cache folder of finished units: keyed by the suite, its version and config,
    the seed, the code it runs (the evaluator and every harness module it imports) and the device."""
    suite, config, evaluator = prepared.suite, prepared.config, prepared.evaluator
    code = results.code_hash(evaluator.__name__)
    if not evaluator.__name__.startswith("harness."):  # a user's evaluator: its own source counts too
        code += results.stable_hash(Path(evaluator.__file__).read_text())
    key = results.stable_hash({"suite": suite.NAME, "version": suite.VERSION, "config": config, "seed": ctx.seed,
                               "code": code, "device": results.device_name(ctx.device)})
    folder = ctx.cache_dir / "units" / suite.NAME / key
    return [Job(evaluator, config, unit, folder) for unit in evaluator.units(config, ctx)]


def _mode(prepared: Prepared, ctx: Context) -> str:
    parallel = getattr(prepared.evaluator, "PARALLEL", "units") if ctx.split == "auto" else ctx.split
    return parallel if distributed.world_size() > 1 else "single"


def run_prepared(prepared: Prepared, ctx: Context, out_dir: Path) -> list[Path]:
    jobs = _jobs(prepared, ctx)
    start = time.perf_counter()
    by_unit, reused = _run_units(jobs, ctx, _mode(prepared, ctx), f"{prepared.suite.NAME} [{prepared.profile}]")
    rows = [row for i in sorted(by_unit) for row in by_unit[i]]
    return _write(prepared, ctx, out_dir, rows, len(reused), len(jobs), jobs[0].folder if jobs else None,
                  time.perf_counter() - start)


def run_pooled(group: list[Prepared], ctx: Context, out_dir: Path) -> list[Path]:
    """Several suites. Under torchrun in the "units" split with a cache: as one pool of units, every rank claiming
    the next free unit of any suite, the longest first (the evaluators' optional unit_cost(unit, config) hint, in
    seconds on one CPU core; only the order depends on it), so no rank idles at a suite's end while another
    finishes its last unit. What one suite makes and another reads (a data-scale checkpoint the linear probe
    probes, the zero-shot CLIP its evaluation uses) is met under that cache entry's lock, trained by whoever comes
    first. Rank 0 writes every suite's tables once all units are done. Otherwise: the suites one after another."""
    if len(group) < 2 or distributed.world_size() < 2 or not ctx.use_cache or any(
            _mode(p, ctx) != "units" for p in group):
        return [path for p in group for path in run_prepared(p, ctx, out_dir)]
    per_suite = [_jobs(p, ctx) for p in group]
    jobs = [(s, j) for s, suite_jobs in enumerate(per_suite) for j in suite_jobs]
    cost = [getattr(j.evaluator, "unit_cost", lambda unit, config: 0.0)(j.unit, j.config) for _, j in jobs]
    order = sorted(range(len(jobs)), key=lambda k: -cost[k])  # stable: equal costs keep suite and unit order
    start = time.perf_counter()
    by_unit, reused = _run_units([jobs[k][1] for k in order], ctx, "units",
                                 ", ".join(p.suite.NAME for p in group) + f" [{group[0].profile}]")
    elapsed = time.perf_counter() - start
    written = []
    for s, (prepared, suite_jobs) in enumerate(zip(group, per_suite)):
        mine = sorted((k, pos) for pos, k in enumerate(order) if jobs[k][0] == s)  # this suite's jobs in unit order
        rows = [row for _, pos in mine for row in by_unit.get(pos, [])]
        written += _write(prepared, ctx, out_dir, rows, sum(pos in reused for _, pos in mine), len(suite_jobs),
                          suite_jobs[0].folder if suite_jobs else None, elapsed)
    return written


def _write(prepared: Prepared, ctx: Context, out_dir: Path, rows: list[dict], done: int, total: int,
           folder: Path | None, elapsed: float) -> list[Path]:
    """Rank 0 writes the suite's tables (the other ranks of a process group write nothing)."""
    suite, profile, config, evaluator = prepared.suite, prepared.profile, prepared.config, prepared.evaluator
    if not distributed.is_main():
        return []  # rank 0 writes the tables
    if done:
        print(f"{suite.NAME}: reused {done} of {total} finished units from {folder}")

    prov = results.provenance(config, ctx.device, ctx.seed)
    prov.update(suite=suite.NAME, suite_version=suite.VERSION, profile=profile)
    # each classification row's per-image predictions to results/predictions/<suite>/ (harness.infra.predictions)
    rows = predictions.write(sweeps.annotate(rows, config), out_dir, suite.NAME)
    tables = evaluator.tables(rows, config) + sweeps.tables(rows, suite.NAME, out_dir)
    written, index = [], {}
    # one run writes a suite's tables and the index at a time: two runs sharing results/ never interleave them
    with cache.lock(Path(out_dir) / ".tables", f"writing tables in {out_dir}"):
        for table in tables:
            df = table.df.assign(**{k: v for k, v in prov.items() if k not in table.df})  # a row's own seed stays
            written += results.write_table(df, out_dir, table.name, table.title, table.md_columns, table.notes)
            if table.plot is not None:
                written.append(results.atomic_write_figure(lambda path, t=table, d=df: t.plot(d, path),
                                                           out_dir / f"{table.name}.png"))
            index[table.name] = table.description
            failing = failing_rows(df)
            if len(failing):
                ctx.failures.append(Failure(suite.NAME, str(Path(out_dir) / f"{table.name}.csv"),
                                            failing.to_dict("records")))
        written.append(results.write_index(out_dir, index))
    print(f"{suite.NAME}: {len(rows)} rows in {elapsed:.1f} s -> " + ", ".join(str(p) for p in written))
    return written


# ------------------------------------------------------------------------------------------------ verdicts
# the columns that say which row failed and by how much, in the order they are printed
FAILURE_COLUMNS = ("model", "library", "check", "comparison", "stage", "dtype", "backend", "seq_len", "heads", "mask",
                   "batch", "logit_scale", "rel_err", "ref_err_vs_fp64", "lib_err_vs_fp64", "tolerance", "rule")


def failing_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The verdict rows of a table that failed: `passed` is False (rows without a verdict, and skipped ones, are
    not failures)."""
    if "passed" not in df:
        return df.iloc[:0]
    bad = df["passed"].eq(False)
    if "result" in df:
        bad &= df["result"].ne("skipped")
    return df[bad]


def report_failures(failures: list[Failure], allow: bool = False, cap: int = 10, file=None) -> int:
    """Print the failing verdict rows (at most `cap`, then where to read the rest) and return the exit status: 1
    when any failed, 0 when none did or `allow` (the exploration mode: --allow-failures)."""
    import sys

    file = file or sys.stderr
    total = sum(len(f.rows) for f in failures)
    if not total:
        return 0
    print(f"{total} verdict row(s) failed{' (allowed by --allow-failures)' if allow else ''}:", file=file)
    shown = 0
    for f in failures:
        for row in f.rows:
            if shown == cap:
                break
            fields = [f"{c}={results._fmt(row[c])}" for c in FAILURE_COLUMNS
                      if c in row and row[c] == row[c] and row[c] is not None and row[c] != ""]
            print(f"  {f.suite} {Path(f.table).name}: " + ", ".join(fields), file=file)
            shown += 1
    if total > shown:
        print(f"  ... and {total - shown} more", file=file)
    tables = sorted({f.table for f in failures})
    print("Read every failing row in " + ", ".join(tables) + " (rows with result == 'fail').", file=file)
    return 0 if allow else 1
