"""What an evaluator receives (Context) and returns (Table); see harness.run.runner for the protocol."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

DEFAULT_CACHE = Path.home() / ".cache" / "vitclip-harness"


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
    # a suite's default-profile config by its name: what the models a suite trains (data_scale:..., zero_shot:...)
    # are built from; the run gives it (harness.run.suites.default_config)
    suite_config: Callable[[str], dict] | None = None
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
