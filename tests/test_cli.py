"""The command line end to end on the smallest model, with a suite declared in a temporary folder."""

import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from harness import cli

TINY_SUITE = '''
"""Agreement on the smallest model (test suite)."""
NAME = "tiny_agreement"
VERSION = 1
EVALUATOR = "agreement"

def get_config(profile):
    return {"models": ["vit_tiny_patch16_224"], "gradient_models": ["vit_tiny_patch16_224"], "weights": "random",
            "photos": ["astronaut"], "random_inputs": 1, "dtypes": ["float64", "float32"],
            "attention": {"batch": 2, "head_dim": 8, "seq_lens": [7], "heads": [1, 2], "masks": ["none", "padding"]}}
'''


@pytest.fixture
def suites_dir(tmp_path):
    d = tmp_path / "suites"
    d.mkdir()
    (d / "tiny_agreement.py").write_text(textwrap.dedent(TINY_SUITE))
    return d


def run(args, capsys):
    code = cli.main(args)
    return code, capsys.readouterr()


@pytest.mark.slow
def test_run_writes_tables_and_second_run_reuses_cache(tmp_path, suites_dir, capsys):
    out, cache = tmp_path / "results", tmp_path / "cache"
    args = ["run", "tiny_agreement", "--device", "cpu", "--out", str(out), "--cache-dir", str(cache),
            "--suites-dir", str(suites_dir)]
    code, first = run(args, capsys)
    assert code == 0 and "reused" not in first.out
    table = pd.read_csv(out / "agreement.csv")
    assert set(table["check"]) == {"logits", "gradients"}
    assert set(table["dtype"]) == {"float64", "float32"}
    assert {"explicit", "math"} <= set(table["backend"])
    assert (table["result"] == "pass").all(), table[["dtype", "backend", "rel_err", "result"]]
    blocks = pd.read_csv(out / "agreement_blocks.csv")
    assert set(blocks["stage"]) == {"patch_embed"} | {f"blocks.{i}" for i in range(12)}
    attention = pd.read_csv(out / "agreement_attention.csv")
    assert len(attention) == (5 + 4) * 2 * 2  # (comparisons without mask + with padding) × heads × dtypes
    assert "reference online softmax vs F.scaled_dot_product_attention" in set(attention["comparison"])
    assert (attention["result"] == "pass").all()
    assert "agreement_attention" in (out / "README.md").read_text()

    code, second = run(args, capsys)
    assert code == 0 and "reused 3 of 3" in second.out
    again = pd.read_csv(out / "agreement.csv")
    pd.testing.assert_series_equal(again["rel_err"], table["rel_err"])


def test_interrupted_run_resumes_from_finished_units(tmp_path, suites_dir, capsys, monkeypatch):
    from harness.evals import agreement

    calls = []
    original = agreement.run_unit

    def fail_on_gradients(unit, config, ctx):
        if unit.startswith("gradients"):
            raise KeyboardInterrupt  # the run is killed in its last unit
        calls.append(unit)
        return original(unit, config, ctx)

    out, cache = tmp_path / "results", tmp_path / "cache"
    args = ["run", "tiny_agreement", "--device", "cpu", "--out", str(out), "--cache-dir", str(cache),
            "--suites-dir", str(suites_dir)]
    monkeypatch.setattr(agreement, "run_unit", fail_on_gradients)
    with pytest.raises(KeyboardInterrupt):
        cli.main(args)
    assert not out.exists()  # nothing half-written
    monkeypatch.setattr(agreement, "run_unit", original)
    code, resumed = run(args, capsys)
    assert code == 0 and "reused 2 of 3" in resumed.out


def test_unknown_suite_and_list(capsys):
    code, out = run(["run", "nope"], capsys)
    assert code == 2 and "unknown suite 'nope'" in out.err
    code, listed = run(["list"], capsys)
    assert code == 0 and "agreement" in listed.out


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "harness", "run", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--profile" in proc.stdout and "--dtype" in proc.stdout


def test_gpu_check_without_a_gpu_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: nox -s gpu runs the real check")
    code = cli.main(["gpu-check", "--out", str(tmp_path / "gpu")])
    assert code == 2
    assert not (tmp_path / "gpu").exists()
