"""The command line end to end on the smallest model, with a suite declared in a temporary folder."""

import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from harness.infra.results import REPO_ROOT
from harness.tools import cli

TINY_SUITE = '''
"""Agreement on the smallest model (test suite)."""
NAME = "tiny_agreement"
VERSION = 1
EVALUATOR = "agreement"

def get_config(profile):
    return {"models": ["timm:vit_tiny_patch16_224"], "gradient_models": ["timm:vit_tiny_patch16_224"],
            "weights": "random",
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
    forward = blocks[blocks["check"] == "block"]
    assert set(forward["stage"]) == {"patch_embed"} | {f"blocks.{i}" for i in range(12)}
    gradients = blocks[blocks["check"] == "gradient_stage"]  # the gradients, stage by stage
    assert set(gradients["stage"]) == {"(before the blocks)", "(after the blocks)"} | {f"blocks.{i}" for i in range(12)}
    assert (blocks["result"] == "pass").all()
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


def _buggy_from_timm(model, copy=True):
    """The reference converted from timm, with a planted bug: its logits 0.1% too large."""
    from harness.convert.timm import from_timm

    ref = from_timm(model, copy=copy)
    ref.head.register_forward_hook(lambda _m, _i, out: out * 1.001)
    return ref


def test_a_failing_verdict_fails_the_command_after_every_table_is_written(tmp_path, suites_dir, capsys, monkeypatch):
    from harness.evals import agreement

    out = tmp_path / "results"
    args = ["run", "tiny_agreement", "--device", "cpu", "--out", str(out), "--no-cache", "--suites-dir",
            str(suites_dir), "--set", "gradient_models=[]", "--set", "attention.heads=[1]"]
    code, clean = run(args, capsys)
    assert code == 0 and "failed" not in clean.err
    monkeypatch.setattr(agreement, "from_timm", _buggy_from_timm)
    code, planted = run(args, capsys)
    assert code == 1
    assert "verdict row(s) failed" in planted.err and "check=logits, dtype=float32" in planted.err
    assert f"Read every failing row in {out / 'agreement.csv'}" in planted.err
    table = pd.read_csv(out / "agreement.csv")  # written before the command failed
    assert set(table[table["check"] == "logits"]["result"]) == {"fail"}
    assert (pd.read_csv(out / "agreement_attention.csv")["result"] == "pass").all()  # the other tables too
    code, allowed = run(args + ["--allow-failures"], capsys)
    assert code == 0 and "allowed by --allow-failures" in allowed.err


PLANTED_EVALUATOR = '''
"""The agreement evaluator with the reference's logits 0.1% too large (a planted bug, for the tests)."""
from harness.convert.timm import from_timm as _from_timm
from harness.evals import agreement as _agreement
from harness.evals.agreement import *  # noqa: F403

def _buggy(model, copy=True):
    ref = _from_timm(model, copy=copy)
    ref.head.register_forward_hook(lambda _m, _i, out: out * 1.001)
    return ref

_agreement.from_timm = _buggy
'''


@pytest.mark.slow
def test_a_failing_verdict_fails_the_command_in_one_thread_processes(tmp_path, suites_dir):
    """--processes 2 (what nox -s eval runs on a CPU): rank 0 of the process group hands its failing rows to the
    command, which exits 1; the same run without the planted bug exits 0."""
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "__init__.py").write_text("")
    (tmp_path / "planted" / "agreement.py").write_text(PLANTED_EVALUATOR)
    (suites_dir / "tiny_planted.py").write_text(textwrap.dedent(TINY_SUITE).replace(
        '"tiny_agreement"', '"tiny_planted"').replace('EVALUATOR = "agreement"', 'EVALUATOR = "planted.agreement"'))
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}:{tmp_path}", "HF_HUB_OFFLINE": "1"}
    for suite, code in (("tiny_agreement", 0), ("tiny_planted", 1)):
        proc = subprocess.run([sys.executable, "-m", "harness", "run", suite, "--device", "cpu", "--processes", "2",
                               "--out", str(tmp_path / suite), "--cache-dir", str(tmp_path / "cache"),
                               "--suites-dir", str(suites_dir), "--set", "gradient_models=[]"],
                              capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == code, proc.stderr[-3000:]
        assert ("verdict row(s) failed" in proc.stderr) == bool(code)
        assert (tmp_path / suite / "agreement.csv").exists()


def test_unknown_suite_and_list(capsys):
    code, out = run(["run", "nope"], capsys)
    assert code == 2 and "unknown suite 'nope'" in out.err
    code, listed = run(["list"], capsys)
    assert code == 0 and "agreement" in listed.out


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "harness", "run", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--profile" in proc.stdout and "--dtype" in proc.stdout


GPU_CHECK_TABLES = ["agreement", "agreement_blocks", "agreement_attention", "agreement_clip_loss", "data_scale",
                    "data_scale_runs", "zero_shot", "linear_probe", "bench_models", "bench_attention",
                    "bench_pipeline", "bench_probe"]


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_a_cpu(tmp_path, capsys):
    """gpu-check --device cpu: the GPU check's code path, every step at a size that fits CI (~3 minutes on 2 cores),
    every table written, and the exit status of its verdicts."""
    code = cli.main(["gpu-check", "--device", "cpu", "--out", str(tmp_path / "gpu"), "--cache-dir",
                     str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    for step in ("agreement", "data_scale", "zero_shot", "linear_probe", "bench", "rehearsal"):
        assert f"gpu-check: {step} " in err
    for table in GPU_CHECK_TABLES:
        assert (tmp_path / "gpu" / f"{table}.csv").exists(), table
    agreement = pd.read_csv(tmp_path / "gpu" / "agreement.csv")
    assert {"bfloat16", "float16"} <= set(agreement["dtype"]) and (agreement["result"] == "pass").all()
    assert {"agreement", "data_scale", "zero_shot", "linear_probe"} <= {
        p.stem for p in (tmp_path / "gpu" / "rehearsal").glob("*.csv")}


@pytest.mark.slow
def test_gpu_check_fails_on_a_failing_verdict(tmp_path, capsys, monkeypatch):
    from harness.evals import agreement

    monkeypatch.setattr(agreement, "from_timm", _buggy_from_timm)
    code = cli.main(["gpu-check", "--device", "cpu", "--quick", "--out", str(tmp_path / "gpu"), "--cache-dir",
                     str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 1 and "verdict row(s) failed" in err and "gpu-check: rehearsal" in err  # every step still ran
    assert (tmp_path / "gpu" / "bench_models.csv").exists()


def test_gpu_check_without_a_gpu_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: nox -s gpu runs the real check")
    code = cli.main(["gpu-check", "--out", str(tmp_path / "gpu")])
    assert code == 2
    assert not (tmp_path / "gpu").exists()
