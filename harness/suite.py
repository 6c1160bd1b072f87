"""What an evaluator receives (Context) and returns (Table); see harness.runner for the protocol."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pandas as pd
import torch

DEFAULT_CACHE = Path.home() / ".cache" / "vitclip-harness"
SUITES_DIR = Path(__file__).resolve().parents[1] / "suites"


@dataclass
class Context:
    device: torch.device
    seed: int = 0
    dtypes: list[str] | None = None  # overrides the suite's dtypes when given
    cache_dir: Path = DEFAULT_CACHE
    use_cache: bool = True
    log: list[str] = field(default_factory=list)


@dataclass
class Table:
    name: str  # file stem under results/
    df: pd.DataFrame
    title: str
    description: str  # one line for results/README.md
    md_columns: list[str] | None = None
    notes: str = ""
    plot: Callable[[pd.DataFrame, Path], None] | None = None  # writes a figure to the given .png path


def suite_names(suites_dir: Path = SUITES_DIR) -> list[str]:
    return sorted(p.stem for p in suites_dir.glob("*.py") if not p.name.startswith("_"))


def load_suite(name: str, suites_dir: Path = SUITES_DIR) -> ModuleType:
    path = suites_dir / f"{name}.py"
    if not path.exists():
        raise SystemExit(f"unknown suite {name!r}: choose from {', '.join(suite_names(suites_dir))} "
                         f"(files in {suites_dir})")
    spec = importlib.util.spec_from_file_location(f"vitclip_suites.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for attr in ("NAME", "VERSION", "EVALUATOR", "get_config"):
        if not hasattr(module, attr):
            raise SystemExit(f"suite file {path} lacks {attr}")
    return module
