"""Every command's exit status: 0 success, 1 a verdict failed (or B is worse), 2 bad input — and bad input is one
line naming the problem and the fix, never a traceback. Each command is driven with a few bad inputs, in process
(an exception escaping would fail the test) and, for the installed entry point, as pip installs it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.tools import cli

BAD = {
    "run": [(["run", "nosuch"], "unknown suite 'nosuch'"),
            (["run", "agreement", "--profile", "bogus"], "invalid choice: 'bogus'"),
            (["run", "agreement", "--set", "nokey=1"], "no suite among agreement has the config key"),
            (["run", "agreement", "--dtype", "float8"], "--dtype float8: unknown dtype"),
            (["run", "agreement", "--processes", "x"], "--processes 'x'"),
            (["run", "agreement", "--overrides", "/nonexistent/o.json"], "--overrides /nonexistent/o.json"),
            (["run", "agreement", "--device", "tpu9"], "--device 'tpu9': not a device")],
    "gpu-check": [(["gpu-check", "--bogus"], "unrecognized arguments: --bogus"),
                  (["gpu-check", "--device", "nonsense"], "not a device")],
    "compare": [(["compare", "--candidate", "python:tests.models:tiny", "--library", "timm:vit_tiny_patch16_224",
                  "--library-kwargs", "{bad"], "--library-kwargs '{bad': not JSON"),
                (["compare", "--candidate", "python:tests.models:tiny", "--library", "timm:vit_tiny_patch16_224",
                  "--dtype", "float8"], "--dtype float8: unknown dtype"),
                (["compare", "--library", "timm:vit_tiny_patch16_224"], "the following arguments are required"),
                (["compare", "--candidate", "python:nosuchmodule:f", "--library", "timm:vit_tiny_patch16_224"],
                 "module 'nosuchmodule' cannot be imported"),
                (["compare", "--candidate", "python:tests.models:tiny", "--library", "timm:vit_nope"],
                 "timm has no model")],
    "diff": [(["diff", "{empty}", "{empty}"], "no table there names per-image predictions"),
             (["diff", "{lost}", "{lost}"], "which is not there: copy the whole results folder"),
             (["diff", "{empty}", "{empty}", "--reps", "0"], "--reps 0"),
             (["diff", "{empty}", "{empty}", "--alpha", "2"], "--alpha 2.0"),
             (["diff", "/nonexistent/a", "/nonexistent/b"], "expected a results folder")],
    "bench": [(["bench", "--parts", "bogus"], "unknown bench part(s) ['bogus']"),
              (["bench", "--models", "timm:vit_tiny_patch16_224"], "expected NAME=BATCH"),
              (["bench", "--dtype", "float8"], "invalid choice: 'float8'")],
    "plan": [(["plan", "--gpu-bench", "/tmp/elsewhere.csv"], "must come from a bench_models.csv under"),
             (["plan", "--gpu-bench", "results/gpu/nosuch.csv"], "no such file"),
             (["plan", "--bogus"], "unrecognized arguments")],
    "rehearsal": [(["rehearsal", "{tmp}/r", "--classes", "0"], "--classes 0: ImageNet has 1,000 classes"),
                  (["rehearsal"], "the following arguments are required: dir")],
    "list": [(["list", "extra"], "unrecognized arguments: extra")],
    "": [([], "the following arguments are required: command"), (["nosuchcommand"], "invalid choice")],
}


@pytest.fixture
def folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "lost").mkdir()
    (tmp_path / "lost" / "t.csv").write_text("model,predictions\nm,predictions/suite/abc.parquet\n")
    return {"empty": tmp_path / "empty", "lost": tmp_path / "lost", "tmp": tmp_path}


@pytest.mark.parametrize("command,argv,message", [(c, a, m) for c, cases in BAD.items() for a, m in cases],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_is_one_line_and_exit_2(command, argv, message, folders, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent.parent)
    argv = [str(folders[a[1:-1]]) if a[1:-1] in folders else a.replace("{tmp}", str(folders["tmp"])) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert "Traceback" not in err[0]


SUBCOMMANDS = ["list", "run", "bench", "rehearsal", "compare", "plan", "diff", "gpu-check", "clear-cache"]


def _installed():
    """The console script pip installed beside this interpreter (pip install . / -e .)."""
    script = Path(sys.executable).parent / "vitclip-harness"
    return str(script) if script.exists() else shutil.which("vitclip-harness")


def test_the_installed_command_is_the_module_entry_point(tmp_path):
    script = _installed()
    assert script, "vitclip-harness is not installed beside this python (pip install -e .)"
    for sub in SUBCOMMANDS:
        done = subprocess.run([script, sub, "--help"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "usage:" in done.stdout, (sub, done.stderr[-2000:])
    done = subprocess.run([script, "list"], capture_output=True, text=True, timeout=300)
    module = subprocess.run([sys.executable, "-m", "harness", "list"], capture_output=True, text=True, timeout=300)
    assert done.returncode == module.returncode == 0 and done.stdout == module.stdout and "agreement" in done.stdout
    bad = subprocess.run([script, "run", "nosuch"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "unknown suite" in bad.stderr
