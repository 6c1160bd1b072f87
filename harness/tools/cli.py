"""python -m harness: list the suites, run them, benchmark, clear the cache."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

from ..infra import distributed, memory
from ..infra.suite import ConfigError
from ..methods.numerics import DTYPES
from ..run import runner
from ..run.suites import known_keys, parse_assignments
from .args import Parser


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m harness", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list the declared suites and what each measures")

    run = sub.add_parser("run", help="run suites and write their tables")
    run.add_argument("suites", nargs="*", help="suite names (default: every suite); e.g. "
                     "python -m harness run zero_shot --model open_clip:ViT-B-32/openai --dataset cifar10")
    run.add_argument("--profile", default="default", choices=runner.PROFILES,
                     help="default: embedded data, random or self-trained weights, CPU-sized; "
                          "full: ImageNet and pretrained weights, GPU-sized")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (GPU when present)")
    run.add_argument("--dtype", action="append", dest="dtypes", metavar="DTYPE",
                     help="agreement: run only these dtypes (repeatable: --dtype float32 --dtype bfloat16); a suite "
                          "naming models (zero_shot, linear_probe): load them in this dtype (default float32)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", type=Path, default=runner.results.REPO_ROOT / "results", help="folder for the tables")
    run.add_argument("--cache-dir", type=Path, default=runner.DEFAULT_CACHE)
    run.add_argument("--no-cache", action="store_true", help="recompute everything; read and write no cache")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments",
                     help="override a config field (repeatable; dotted keys, list items by index, VALUE parsed as "
                          "JSON where it parses): --set data.root=/data/imagenet --set batch_size=512; "
                          "SUITE.KEY for one suite only")
    run.add_argument("--model", action="append", default=[], metavar="MODEL", dest="models",
                     help="a model for the suite's `models` (repeatable; a registry name, or a JSON object): "
                          "--model open_clip:ViT-B-32/openai --model hf:/ckpts/my-clip")
    run.add_argument("--dataset", action="append", default=[], metavar="DATASET", dest="datasets",
                     help="a data set for the suite's `datasets` (repeatable; a name, or a JSON object): "
                          "--dataset cifar10 --dataset imagefolder:/data/x")
    run.add_argument("--overrides", type=Path, metavar="FILE",
                     help="a JSON file {suite: {key: value}} of overrides (python -m harness rehearsal writes one)")
    run.add_argument("--processes", default="1", metavar="N",
                     help="on a CPU, run the suites that split into units (agreement, data_scale, linear_probe) as N "
                          "one-thread processes under torchrun, each taking whole units; auto: one per core "
                          "(nox -s eval uses auto; --processes 1 turns it off)")
    run.add_argument("--split", default="auto", choices=["auto", "units", "data"],
                     help="under torchrun: split each suite by units or shard its images (auto: the suite's choice)")
    run.add_argument("--suites-dir", type=Path, default=runner.SUITES_DIR,
                     help="folder of suite files (suites/*.py are Python, run as code by design: use only your own)")
    run.add_argument("--allow-failures", action="store_true",
                     help="exit 0 even when verdict rows fail (they are still printed and in the tables); by default "
                          "a failing row makes the command exit 1, after every table is written")

    sub.add_parser("bench", help="speed and memory benchmarks (see python -m harness bench --help)",
                   add_help=False)
    sub.add_parser("rehearsal", help="write an ImageNet-shaped tree and library-format checkpoints for the full "
                                     "profile (see python -m harness rehearsal --help)", add_help=False)
    sub.add_parser("compare", help="check your own ViT or CLIP against timm or open_clip, stage by stage (see "
                                   "python -m harness compare --help)", add_help=False)
    sub.add_parser("plan", help="measure rates here and write results/full_profile_plan.md (see --help)",
                   add_help=False)
    sub.add_parser("diff", help="two runs compared image by image: accuracy difference, paired bootstrap interval, "
                                "McNemar's test; --fail-if-worse for a CI gate (see --help)", add_help=False)

    sub.add_parser("report", help="write DIR/index.html, one static page of a results folder: verdicts first, "
                   "then the block-by-block agreement, plots, the gate's diff, every table (run writes it too)",
                   add_help=False)
    gpu = sub.add_parser("gpu-check", help="the one-command GPU check: agreement in bfloat16/float16 with every "
                                           "SDPA backend, the benchmarks, the training suites' default profiles "
                                           "(--device cpu: every step at a size that fits CI). Sized for 5 minutes "
                                           "on one H100; measured on an H200 it takes longer (the linear probe's "
                                           "fits: results/gpu/RUN.md)")
    gpu.add_argument("--out", type=Path, default=runner.results.REPO_ROOT / "results" / "gpu",
                     help="folder for the tables (default results/gpu)")
    gpu.add_argument("--device", default="cuda")
    gpu.add_argument("--cache-dir", type=Path, default=runner.DEFAULT_CACHE)
    gpu.add_argument("--quick", action="store_true", help="a smoke check in about 90 s")
    gpu.add_argument("--allow-failures", action="store_true", help="exit 0 even when verdict rows fail")

    clear = sub.add_parser("clear-cache", help="delete the cache folder")
    clear.add_argument("--cache-dir", type=Path, default=runner.DEFAULT_CACHE)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    memory.keep_freed_memory()  # freed memory stays in the process (fresh pages are costly on these VMs)
    if argv[:1] == ["bench"]:
        from . import bench

        return bench.main(argv[1:])
    if argv[:1] == ["rehearsal"]:
        from . import rehearsal

        return rehearsal.main(argv[1:])
    if argv[:1] == ["compare"]:
        from .compare import main as compare_main

        return compare_main(argv[1:])
    if argv[:1] == ["plan"]:
        from . import plan

        return plan.main(argv[1:])
    if argv[:1] == ["diff"]:
        from . import diff

        return diff.main(argv[1:])
    if argv[:1] == ["report"]:
        from . import report

        return report.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "list":
        for name in runner.suite_names():
            suite = runner.load_suite(name)
            print(f"{name} (v{suite.VERSION}): {(suite.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if args.command == "clear-cache":
        shutil.rmtree(args.cache_dir, ignore_errors=True)
        print(f"removed {args.cache_dir}")
        return 0

    if args.command == "gpu-check":
        return gpu_check(args.out, args.device, args.cache_dir, args.quick, args.allow_failures)

    names = args.suites or runner.suite_names(args.suites_dir)
    for dtype in args.dtypes or []:
        if dtype not in DTYPES:
            raise ConfigError(f"--dtype {dtype}: unknown dtype; choose from {', '.join(DTYPES)}")
    gpu = distributed.init_from_env()  # under torchrun: join the process group; this rank's GPU, if any
    device = runner.resolve_device(args.device)
    if gpu is not None and device.type == "cuda":
        device = gpu
    ctx = runner.Context(device=device, seed=args.seed, dtypes=args.dtypes, cache_dir=args.cache_dir,
                         use_cache=not args.no_cache, split=args.split)
    assignments = {**read_overrides(args.overrides), **parse_assignments(args.assignments)}
    assignments.update(listed(names, args.models, args.datasets, args.suites_dir, assignments))
    # every suite's config resolved and checked before any work starts
    prepared = [runner.prepare(name, args.profile, ctx, assignments, args.suites_dir) for name in names]
    others = set(runner.suite_names(args.suites_dir)) - set(names)  # keys for suites not run now are left alone
    unused = [k for k in assignments if k.partition(".")[0] not in others and not any(
        runner.overrides_for(p.suite.NAME, p.config, {k: None}) for p in prepared)]
    if unused:
        plain = sorted({k for p in prepared for k in known_keys(p.config)})
        close = sorted({c for k in unused for c in difflib.get_close_matches(k, plain, n=3, cutoff=0.5)})
        raise ConfigError(f"no suite among {', '.join(names)} has the config key(s) {', '.join(unused)}"
                          + (f" (did you mean {', '.join(close)}?)" if close else "")
                          + f". Known keys (SUITE.KEY for one suite only): {', '.join(plain)}")
    processes = _processes(args.processes, device)
    for parallel, group in itertools.groupby(prepared, key=lambda p: processes > 1 and getattr(
            p.evaluator, "CPU_PROCESSES", False)):
        group = list(group)
        start = time.perf_counter()
        if parallel:  # whole units spread over one-thread processes (torchrun, gloo), the tables written by rank 0
            ctx.failures += _run_in_processes([p.suite.NAME for p in group], processes, argv)
        else:  # one after another; under torchrun's unit split, one pool of units (runner.run_pooled)
            runner.run_pooled(group, ctx, args.out)
        if distributed.is_main():
            print(f"{', '.join(p.suite.NAME for p in group)}: done in {time.perf_counter() - start:.1f} s"
                  + (f" ({processes} one-thread processes)" if parallel else ""), file=sys.stderr)
    distributed.barrier()  # every rank leaves once rank 0 has written the tables
    if not distributed.is_main():
        return 0
    handoff = os.environ.get(FAILURES_FILE)
    if handoff:  # a process group started by _run_in_processes: the parent reports the failures
        Path(handoff).write_text(json.dumps([dataclasses.asdict(f) for f in ctx.failures], default=str))
        return 0
    from .report import write_report

    print(f"report: {write_report(args.out)}", file=sys.stderr)  # from the tables just written (and the folder's)
    return runner.report_failures(ctx.failures, args.allow_failures)


def _processes(value: str, device) -> int:
    """How many one-thread processes run the suites that can split their units: 1 under torchrun already, on a
    GPU, or when asked; "auto": one per core of this machine (measured on 2 cores: two one-thread processes train
    the data-scale ViT at 40.1 steps/s together, one two-thread process at 27.4)."""
    if distributed.world_size() > 1 or device.type != "cpu":
        return 1
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"--processes {value!r}: a number of processes, or auto") from None
    if n < 1:
        raise ConfigError(f"--processes {n}: at least 1")
    return n


FAILURES_FILE = "VITCLIP_FAILURES_FILE"  # where rank 0 of a process group leaves its failing verdict rows


def _run_in_processes(names: list[str], processes: int, argv: list[str]) -> list[runner.Failure]:
    """`python -m harness run NAMES ...` (the same options) under torchrun, units claimed by whichever process is
    free; a failing process fails the run with its message, as a single process would. Returns the failing verdict
    rows of the tables rank 0 wrote (handed over in a file), for this process to report."""
    import subprocess
    import tempfile

    run_args = _parser().parse_args(argv)
    options = [a for a in argv[1:] if a not in run_args.suites]  # everything but the suite names
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "harness", "run", *names, *options, "--processes", "1", "--split", "units"]
    with tempfile.TemporaryDirectory() as tmp:
        handoff = Path(tmp) / "failures.json"
        proc = subprocess.run(cmd, env={**os.environ, FAILURES_FILE: str(handoff)})
        if proc.returncode:
            raise SystemExit(proc.returncode)
        return [runner.Failure(**f) for f in json.loads(handoff.read_text())] if handoff.exists() else []


def listed(names: list[str], models: list[str], datasets: list[str], suites_dir: Path, given: dict) -> dict:
    """--model / --dataset as the `models` / `datasets` assignments of the suites named (a value that parses as JSON,
    an object, is taken as one); ConfigError for a suite whose config has no such list, or when `given` (the --set
    and --overrides assignments) sets that list or its items too."""
    out = {}
    for key, values in (("models", models), ("datasets", datasets)):
        if not values:
            continue
        named = [k for k in given if k == key or k.startswith(f"{key}.") or k.partition(".")[2].split(".")[0] == key]
        if named:  # which would win is a guess: refuse the pair
            raise ConfigError(f"--{key[:-1]} and {', '.join(named)} both set the suite's {key}: name them one way "
                              f"(--{key[:-1]} for the list, or --set / --overrides for it and its items)")
        for name in names:
            config = runner.suites.config(runner.load_suite(name, suites_dir), "default")
            if not isinstance(config.get(key), list):
                raise ConfigError(f"--{key[:-1]}: suite {name} takes no {key} (its config has no {key!r} list); "
                                  f"name the suites that do (zero_shot, linear_probe), or use --set")
        out[key] = [_value(v) for v in values]
    return out


def _value(text: str):
    import json

    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{text!r}: not a JSON object ({e})") from None
    return text


def read_overrides(path: Path | None) -> dict:
    """An overrides file {suite: {key: value}} as "suite.key" assignments."""
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--overrides {path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"--overrides {path}: expected a JSON object {{suite: {{key: value}}}}")
    return {f"{suite}.{key}": value for suite, keys in data.items() for key, value in keys.items()}


def gpu_check(out: Path, device_name: str = "cuda", cache_dir: Path = runner.DEFAULT_CACHE,
              quick: bool = False, allow_failures: bool = False) -> int:
    """Everything a GPU changes, in one command, each step timed: every suite's default profile (the agreement
    suite in bfloat16 and float16 with every SDPA backend the GPU offers, TF32 off), the benchmarks in bfloat16
    (models, attention, probe, pipeline), and a rehearsal of the full profile (an ImageNet-shaped tree and
    library-format checkpoints, models shrunk: each suite's REHEARSAL). --quick: the suites that declare QUICK
    (agreement on its smallest models), the benchmarks' quick parts, a 10-class rehearsal of the suites that
    declare QUICK_REHEARSAL (zero_shot). `--device cpu` runs every step at a size that fits CI (each suite's "ci"
    profile), through the same code. Tables go to `out`, the rehearsal's to out/rehearsal; the exit status is 1
    when a verdict row failed (after every step ran), 0 otherwise or with allow_failures.

    Step times measured on one NVIDIA H200 (2026-11-29, results/gpu/RUN.md, each step run on its own): agreement
    69 s, data_scale ~150 s, zero_shot 53 s, the models and attention benchmarks 49 s; the linear probe did not
    finish in 270 s (its L-BFGS fits are slower there than on 2 CPU cores), so the whole check takes well over the
    5 minutes it was sized for; the probe and pipeline benchmarks and the rehearsal have not run on a GPU."""
    from . import bench, rehearsal

    device = runner.resolve_device(device_name)
    on_cpu = device.type == "cpu"
    ctx = runner.Context(device=device, cache_dir=cache_dir)
    timings: dict[str, float] = {}
    status = 0

    def step(name: str, fn) -> None:
        start = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - start
        print(f"gpu-check: {name} {timings[name]:.0f} s", file=sys.stderr, flush=True)

    suites = {name: runner.load_suite(name) for name in runner.suite_names()}
    for name, suite in suites.items():
        if quick and not hasattr(suite, "QUICK"):
            continue  # --quick: the suites that declare a quick check (agreement's smallest models)
        profile = "ci" if on_cpu else "default"  # on a CPU each suite's "ci" profile: its every step, CI-sized
        quick_sets = {f"{name}.{k}": v for k, v in getattr(suite, "QUICK", {}).items()} if quick and not on_cpu \
            else None
        step(name, lambda n=name, p=profile, a=quick_sets: runner.run_suite(n, p, ctx, out, assignments=a))
    parts = ["models", "attention", "pipeline"] + ([] if quick else ["probe"])
    step("bench", lambda: bench.run(device, "bfloat16", out, parts, quick=quick or on_cpu))

    def rehearse() -> None:
        nonlocal status
        root = Path(cache_dir) / "rehearsal-gpu-check"
        names = [n for n, s in suites.items() if not quick or getattr(s, "QUICK_REHEARSAL", False)]
        sets = [f"{k}={json.dumps(v)}" for k, v in rehearsal.small_models(names).items()]
        rehearsal.main([str(root), "--classes", "10" if quick or on_cpu else "1000", "--train-per-class", "1",
                        "--val-per-class", "1", "--workers", str(min(16, os.cpu_count() or 1)),
                        "--suites", ",".join(names), *[a for s in sets for a in ("--set", s)]])
        status = max(status, _main(["run", *names, "--profile", "full", "--device", str(device), "--overrides",
                                    str(root / "overrides.json"), "--out", str(Path(out) / "rehearsal"),
                                    "--cache-dir", str(cache_dir), "--allow-failures"]))
        ctx.failures.extend(_rehearsal_failures(Path(out) / "rehearsal"))

    step("rehearsal", rehearse)
    total = sum(timings.values())
    print("gpu-check: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {total:.0f} s -> {out}")
    return max(status, runner.report_failures(ctx.failures, allow_failures))


def _rehearsal_failures(folder: Path) -> list[runner.Failure]:
    """The failing verdict rows of the tables the rehearsal wrote (read back from their CSVs)."""
    import pandas as pd

    found = []
    for csv in sorted(folder.glob("*.csv")):
        failing = runner.failing_rows(pd.read_csv(csv))
        if len(failing):
            found.append(runner.Failure("rehearsal", str(csv), failing.to_dict("records")))
    return found


if __name__ == "__main__":
    sys.exit(main())
