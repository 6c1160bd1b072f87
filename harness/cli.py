"""python -m harness: list the suites, run them, clear the cache."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from . import runner


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="list the declared suites and what each measures")

    run = sub.add_parser("run", help="run suites and write their tables")
    run.add_argument("suites", nargs="*", help="suite names (default: every suite)")
    run.add_argument("--profile", default="default", choices=runner.PROFILES,
                     help="default: embedded data, random or self-trained weights, CPU-sized; "
                          "full: ImageNet and pretrained weights, GPU-sized")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (GPU when present)")
    run.add_argument("--dtype", action="append", dest="dtypes", metavar="DTYPE",
                     help="run only these dtypes (repeatable: --dtype float32 --dtype bfloat16)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", type=Path, default=runner.results.REPO_ROOT / "results", help="folder for the tables")
    run.add_argument("--cache-dir", type=Path, default=runner.DEFAULT_CACHE)
    run.add_argument("--no-cache", action="store_true", help="recompute everything; read and write no cache")
    run.add_argument("--suites-dir", type=Path, default=runner.SUITES_DIR, help=argparse.SUPPRESS)

    clear = sub.add_parser("clear-cache", help="delete the cache folder")
    clear.add_argument("--cache-dir", type=Path, default=runner.DEFAULT_CACHE)
    return p


def main(argv: list[str] | None = None) -> int:
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

    names = args.suites or runner.suite_names(args.suites_dir)
    ctx = runner.Context(device=runner.resolve_device(args.device), seed=args.seed, dtypes=args.dtypes,
                         cache_dir=args.cache_dir, use_cache=not args.no_cache)
    for name in names:  # fail on a misspelt name before any work
        runner.load_suite(name, args.suites_dir)
    for name in names:
        start = time.perf_counter()
        runner.run_suite(name, args.profile, ctx, args.out, args.suites_dir)
        print(f"{name}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
