"""What an evaluator receives (Context) and returns (Table); see harness.infra.runner for the protocol."""

from __future__ import annotations

import copy
import difflib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pandas as pd
import torch

DEFAULT_CACHE = Path.home() / ".cache" / "vitclip-harness"
SUITES_DIR = Path(__file__).resolve().parents[2] / "suites"


@dataclass
class Failure:
    """The failing verdict rows of one table (rows whose `passed` is False), as the table holds them."""

    suite: str
    table: str  # the CSV the rows are in
    rows: list[dict]


@dataclass
class Context:
    device: torch.device
    seed: int = 0
    dtypes: list[str] | None = None  # overrides the suite's dtypes when given
    cache_dir: Path = DEFAULT_CACHE
    use_cache: bool = True
    split: str = "auto"  # under torchrun: "units", "data", or "auto" (the evaluator's PARALLEL)
    log: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)  # verdict rows that failed, per table written


@dataclass
class Table:
    name: str  # file stem under results/
    df: pd.DataFrame
    title: str
    description: str  # one line for results/README.md
    md_columns: list[str] | None = None
    notes: str = ""
    plot: Callable[[pd.DataFrame, Path], None] | None = None  # writes a figure to the given .png path


class ConfigError(ValueError):
    """Input that cannot work (a config key, a dtype, a model, a weight file, a data folder): raised before any
    work starts, saying what is wrong and how to fix it. The command line prints it and exits with status 2."""


def suite_names(suites_dir: Path = SUITES_DIR) -> list[str]:
    return sorted(p.stem for p in suites_dir.glob("*.py") if not p.name.startswith("_"))


def load_suite(name: str, suites_dir: Path = SUITES_DIR) -> ModuleType:
    path = suites_dir / f"{name}.py"
    if not path.exists():
        raise ConfigError(f"unknown suite {name!r}: choose from {', '.join(suite_names(suites_dir))} "
                         f"(files in {suites_dir})")
    spec = importlib.util.spec_from_file_location(f"vitclip_suites.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for attr in ("NAME", "VERSION", "EVALUATOR", "get_config"):
        if not hasattr(module, attr):
            raise ConfigError(f"suite file {path} lacks {attr}")
    return module


def parse_assignments(items: list[str]) -> dict[str, object]:
    """["a.b=3", "name=vit"] -> {"a.b": 3, "name": "vit"}: each VALUE parsed as JSON where it parses (numbers,
    true/false/null, lists, objects), kept as a string otherwise."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set batch_size=128 or "
                              "--set data.root=/data/imagenet")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def known_keys(config: dict, prefix: str = "") -> list[str]:
    """Every dotted key of a config (dicts are walked, lists are leaves)."""
    keys = []
    for k, v in config.items():
        keys.append(prefix + k)
        if isinstance(v, dict):
            keys += known_keys(v, prefix + k + ".")
    return keys


def has_key(config: dict, key: str) -> bool:
    node = config
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def apply_overrides(config: dict, overrides: dict[str, object], suite: str) -> dict:
    """A copy of `config` with each dotted key set to its value; a key the config does not have is refused with
    the closest known keys (list items are reached by index: models.0.weights)."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        if not has_key(config, key):
            keys = known_keys(config)
            close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
            raise ConfigError(f"suite {suite!r} has no config key {key!r}"
                              + (f" (did you mean {', '.join(close)}?)" if close else "")
                              + f". Known keys: {', '.join(keys)}")
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return config


def overrides_for(suite: str, config: dict, assignments: dict[str, object]) -> dict[str, object]:
    """The assignments that concern one suite: "SUITE.key" for it alone, a plain key for every suite that has it."""
    mine = {}
    for key, value in assignments.items():
        head, _, rest = key.partition(".")
        if head == suite and rest:
            mine[rest] = value
        elif has_key(config, key):
            mine[key] = value
    return mine
