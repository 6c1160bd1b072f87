"""The full-profile plan takes GPU rates only from this repository's own results."""

import pandas as pd
import pytest

from harness.infra.results import REPO_ROOT
from harness.infra.suite import ConfigError
from harness.tools import plan


def test_gpu_rates_come_from_this_repositorys_results_only(tmp_path):
    outside = tmp_path / "bench_models.csv"
    pd.DataFrame({"model": ["ViT-B-32"], "implementation": ["library"], "images_per_s": [1e9],
                  "device": ["a GPU nobody here measured"]}).to_csv(outside, index=False)
    with pytest.raises(ConfigError, match="must come from a bench_models.csv under .*results"):
        plan.read_bench_table(outside)
    with pytest.raises(ConfigError, match="bench_models.csv under"):
        plan.read_bench_table(REPO_ROOT / "results" / "gpu" / "bench_models.md")  # a table's prose is not read
    if plan.GPU_BENCH.exists():  # the GPU check's own table, when a GPU has run it
        table, device = plan.read_bench_table(plan.GPU_BENCH)
        assert device == table["device"].iloc[0] and (table["implementation"] == "library").any()
