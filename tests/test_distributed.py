"""torchrun with gloo on CPU: the same tables as one process, every image once, a failing rank stops cleanly."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import torch

from harness.infra.results import REPO_ROOT
from harness.tools import cli
from tests.test_cli import TINY_SUITE
from tests.test_zero_shot import SUITE as TINY_ZERO_SHOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}


def torchrun(args: list[str], nproc: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or ENV, cwd=REPO_ROOT, timeout=600)


def why(proc: subprocess.CompletedProcess) -> str:
    """A failed run's reason for an assertion message: the lines that say what went wrong (a rank's fatal error or
    abort comes before the long list of loaded modules Python prints with it), then the end of stderr."""
    said = [line for line in proc.stderr.splitlines()
            if any(k in line for k in ("Fatal Python error", "terminate called", "Error", "error:", "Traceback"))]
    return "\n".join(said[:30]) + "\n...\n" + proc.stderr[-1500:]


EXTRACT = '''
import sys
import numpy as np
import torch
from harness import data
from harness.infra import distributed
from harness.methods.features import extract

distributed.init_from_env()
test = data.load("fashion_mnist", "test")
rows = np.arange(3, 3 + int(sys.argv[2]))  # 25 rows: does not divide by 2 ranks
with distributed.data_parallel():
    f = extract(lambda x: x.flatten(1), test, data.images.GrayscaleTransform(), indices=rows, model_id="pixels",
                weights="none", batch_size=4, chunk_size=10)
if distributed.is_main():
    np.savez(sys.argv[1], features=f.features, labels=f.labels, indices=f.indices)
'''


def test_feature_extraction_shards_and_gathers_in_order(tmp_path):
    script = tmp_path / "extract.py"
    script.write_text(EXTRACT)
    out = tmp_path / "features.npz"
    proc = torchrun([str(script), str(out), "25"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(out)
    from harness import data
    from harness.methods.features import extract

    test = data.load("fashion_mnist", "test")
    single = extract(lambda x: x.flatten(1), test, data.images.GrayscaleTransform(), indices=np.arange(3, 28),
                     model_id="pixels", weights="none", batch_size=4, chunk_size=10)
    assert got["indices"].tolist() == list(range(3, 28))  # every image once, in data-set order
    assert np.array_equal(got["features"], single.features) and np.array_equal(got["labels"], single.labels)


def assert_same_errors(one: pd.DataFrame, two: pd.DataFrame) -> None:
    """Each row's relative error equal to round-off between two runs that compute with other BLAS blockings (other
    thread counts): within a factor of 2 of each other, or both under a tenth of the dtype's unit roundoff. A
    relative error is a norm of round-off over thousands of elements: another blocking redraws the round-off, not
    its size (measured on 2 AMD EPYC cores, 1 vs 2 threads: within 1.22x, 74% of rows bit for bit). It fails a row
    computed in another dtype (float32 vs float64: 1e8x) or on other inputs or weights."""
    u = one["dtype"].map(lambda d: torch.finfo(getattr(torch, d)).eps / 2).to_numpy(float)
    a, b = one["rel_err"].to_numpy(float), two["rel_err"].to_numpy(float)
    ok = np.abs(a - b) <= np.maximum(a, b) / 2 + u / 10
    assert ok.all(), pd.DataFrame({"dtype": one["dtype"], "one": a, "two": b})[~ok]


def _suite_dir(tmp_path, name: str, text: str):
    d = tmp_path / "suites"
    d.mkdir(exist_ok=True)
    (d / f"{name}.py").write_text(textwrap.dedent(text))
    return d


def test_agreement_under_torchrun_equals_one_process(tmp_path):
    """Units mode: each rank runs every other unit; rank 0 gathers and writes the same table."""
    suites = _suite_dir(tmp_path, "tiny_agreement", TINY_SUITE)
    common = ["run", "tiny_agreement", "--device", "cpu", "--suites-dir", str(suites)]
    assert cli.main([*common, "--out", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "c1")]) == 0
    proc = torchrun(["-m", "harness", *common, "--out", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "c2")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for table in ("agreement", "agreement_blocks", "agreement_attention"):
        one, two = pd.read_csv(tmp_path / "one" / f"{table}.csv"), pd.read_csv(tmp_path / "two" / f"{table}.csv")
        assert len(one) == len(two) and list(one.columns) == list(two.columns)
        keys = [c for c in ("unit", "model", "check", "stage", "dtype", "backend", "comparison", "mask", "heads")
                if c in one]
        pd.testing.assert_frame_equal(one[keys], two[keys])  # the same rows in the same order
        assert_same_errors(one, two)
        assert (two["result"] == one["result"]).all()


def test_zero_shot_under_torchrun_equals_one_process(tmp_path):
    """Data mode: every rank extracts half of each feature set; the table equals a single process's."""
    suites = _suite_dir(tmp_path, "tiny_zero_shot", TINY_ZERO_SHOT.format(repo=str(REPO_ROOT)))
    common = ["run", "tiny_zero_shot", "--device", "cpu", "--suites-dir", str(suites)]
    assert cli.main([*common, "--out", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "c1")]) == 0
    # the second run gets the trained CLIP (trained once, in the first run) and nothing else: its features,
    # zero-shot and retrieval numbers are computed again, data-parallel
    (tmp_path / "c2").mkdir()
    subprocess.run(["cp", "-r", str(tmp_path / "c1" / "checkpoints"), str(tmp_path / "c2")], check=True)
    proc = torchrun(["-m", "harness", *common, "--out", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "c2")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = pd.read_csv(tmp_path / "one" / "zero_shot.csv"), pd.read_csv(tmp_path / "two" / "zero_shot.csv")
    # exactly equal: which rows there are and how many images and captions each counts
    keys = ["task", "library", "templates", "images"]
    pd.testing.assert_frame_equal(one[keys], two[keys])
    # Two one-thread processes compute each image's features with other BLAS blockings than one process does,
    # so features (and the classifier's logits) agree to round-off, not bit for bit (any CPU, any thread
    # count). A prediction can flip only where an image's two best classes are tied to round-off: allow one
    # image per row (100 / images points) for zero-shot classification and retrieval.
    metrics = [c for c in one if c.startswith(("top", "mean_per_class", "image_to_text", "text_to_image"))]
    zs = one.task.isin(["classification", "retrieval"]).to_numpy()
    a, b = one.loc[zs, metrics].to_numpy(float), two.loc[zs, metrics].to_numpy(float)
    one_image = 100.0 / one.loc[zs, "images"].to_numpy(float)[:, None] + 1e-9
    assert ((np.abs(a - b) <= one_image) | (np.isnan(a) & np.isnan(b))).all(), (a, b)
    # equal to round-off: the trained CLIP's temperature (read from one checkpoint) and the classifier
    exact = [c for c in ("temperature", "classifier_max_abs_diff") if c in one]
    np.testing.assert_allclose(two[exact].to_numpy(float), one[exact].to_numpy(float), rtol=0, atol=1e-6)
    # statistical only: the linear probe chooses its strength on a validation split of 20 images, where a
    # round-off change in the features can move one image and so the chosen strength; its accuracy then
    # moves by a few points (3.5 seen on one CPU). Bound: 3 binomial standard errors of one accuracy on the
    # probe's test images.
    probe = (one.task == "linear probe").to_numpy()
    p = one.loc[probe, "top1"].to_numpy(float) / 100
    se = 100 * np.sqrt(p * (1 - p) / one.loc[probe, "images"].to_numpy(float))
    diff = np.abs(two.loc[probe, "top1"].to_numpy(float) - one.loc[probe, "top1"].to_numpy(float))
    assert (diff <= 3 * se).all(), (diff, se)


FAILING = '''
"""Four units; unit 3 fails, on whichever rank claims it, while VITCLIP_TEST_FAIL is set."""
import os
import pandas as pd
from harness.infra.suite import Table

def units(config, ctx):
    return ["u0", "u1", "u2", "u3"]

def run_unit(unit, config, ctx):
    if unit == "u3" and os.environ.get("VITCLIP_TEST_FAIL"):
        raise ValueError("the disk is full")
    return [{"unit_name": unit, "value": int(unit[1:]) ** 2}]

def tables(rows, config):
    return [Table("flaky", pd.DataFrame(rows), "flaky", "a test table")]
'''

FAILING_SUITE = '''
NAME = "flaky"
VERSION = 1
EVALUATOR = "vitclip_test_plugins.flaky"  # a dotted path: any importable module

def get_config(profile):
    return {}
'''


def test_failing_rank_stops_the_run_and_the_rerun_reuses_the_cache(tmp_path):
    suites = _suite_dir(tmp_path, "flaky", FAILING_SUITE)
    (tmp_path / "vitclip_test_plugins").mkdir()
    (tmp_path / "vitclip_test_plugins" / "__init__.py").write_text("")
    (tmp_path / "vitclip_test_plugins" / "flaky.py").write_text(FAILING)
    env = {**ENV, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{tmp_path}"}
    args = ["-m", "harness", "run", "flaky", "--device", "cpu", "--suites-dir", str(suites), "--out",
            str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    failed = torchrun(args, env={**env, "VITCLIP_TEST_FAIL": "1"})
    assert failed.returncode != 0
    # which rank runs u3 depends on timing: with a cache the ranks claim units as they free up (and these take
    # microseconds), so the message names whichever it was
    assert re.search(r"rank [01] of 2: unit 'u3' failed \(ValueError: the disk is full\)", failed.stderr), \
        failed.stderr[-3000:]
    assert not (tmp_path / "out").exists()  # no table, not even half of one
    rerun = torchrun(args, env=env)
    assert rerun.returncode == 0, why(rerun)
    assert "reused 3 of 4 finished units" in rerun.stdout
    assert pd.read_csv(tmp_path / "out" / "flaky.csv")["value"].tolist() == [0, 1, 4, 9]


def test_processes_split_units_and_write_the_same_table(tmp_path):
    """`run --processes 2`: two one-thread processes claim whole units as they go; the table is a single process's
    (same rows in the same order, each unit once; errors equal to round-off: 1 thread vs 2)."""
    suites = _suite_dir(tmp_path, "tiny_agreement", TINY_SUITE)
    common = ["run", "tiny_agreement", "--device", "cpu", "--suites-dir", str(suites)]
    assert cli.main([*common, "--out", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "c1")]) == 0
    proc = subprocess.run([sys.executable, "-m", "harness", *common, "--out", str(tmp_path / "two"), "--cache-dir",
                           str(tmp_path / "c2"), "--processes", "2"], capture_output=True, text=True, env=ENV,
                          cwd=REPO_ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(2 one-thread processes)" in proc.stderr and "rank 1/2" in proc.stderr
    one, two = pd.read_csv(tmp_path / "one" / "agreement.csv"), pd.read_csv(tmp_path / "two" / "agreement.csv")
    keys = ["unit", "model", "check", "dtype", "backend"]
    pd.testing.assert_frame_equal(one[keys], two[keys])
    assert_same_errors(one, two)
    assert (two["result"] == one["result"]).all() and two["device"].str.contains("1 threads").all()


def test_processes_pool_the_units_of_several_suites(tmp_path):
    """`run A B --processes 2`: one pool of units over both suites (a process free after its last agreement unit
    takes a zero-shot one), the zero-shot CLIP trained once under its lock and read by the evaluation on whichever
    process; each table equals one process's run at the same thread count, cell for cell."""
    suites = _suite_dir(tmp_path, "tiny_agreement", TINY_SUITE)
    _suite_dir(tmp_path, "tiny_zero_shot", TINY_ZERO_SHOT.format(repo=str(REPO_ROOT)))
    common = ["-m", "harness", "run", "tiny_agreement", "tiny_zero_shot", "--device", "cpu", "--suites-dir",
              str(suites)]
    # the ranks take os.cpu_count() // 2 threads each (harness.infra.distributed): the single process gets as many, so
    # both compute with the same kernels and blockings and their numbers are equal, not only close
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    one = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "c1")],
                         capture_output=True, text=True, env={**ENV, "OMP_NUM_THREADS": threads}, cwd=REPO_ROOT,
                         timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "two"), "--cache-dir", str(tmp_path / "c2"),
                          "--processes", "2"], capture_output=True, text=True, env=ENV, cwd=REPO_ROOT, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "tiny_agreement, tiny_zero_shot: done in" in two.stderr  # one pool, not one suite after the other
    assert len(list((tmp_path / "c2" / "checkpoints" / "zero_shot").rglob("*.safetensors"))) == 1  # trained once
    timing = ("unit_seconds", "seconds", "train_seconds", "extract_seconds", "probe_seconds", "sklearn_seconds",
              "time_utc", "device", "git_sha")
    for table in ("agreement", "agreement_blocks", "agreement_attention", "zero_shot"):
        a, b = pd.read_csv(tmp_path / "one" / f"{table}.csv"), pd.read_csv(tmp_path / "two" / f"{table}.csv")
        keep = [c for c in a if c not in timing]
        pd.testing.assert_frame_equal(a[keep], b[keep], check_exact=True)
    # a rerun of the pool with nothing changed computes nothing: every unit of both suites is read back
    again = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "two"), "--cache-dir",
                            str(tmp_path / "c2"), "--processes", "2"], capture_output=True, text=True, env=ENV,
                           cwd=REPO_ROOT, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for name in ("tiny_agreement", "tiny_zero_shot"):
        assert re.search(rf"^{name}: reused (\d+) of \1 finished units", again.stdout, re.MULTILINE), again.stdout
