"""nox sessions: tests, eval, lint, bench.

Every session runs in ONE shared virtual environment, .nox/shared (torch with its CUDA libraries is ~6 GB):
it is created on first use and reinstalled only when pyproject.toml changes.

    nox -s tests                          the test suite (pytest; add -- -m "not slow" for the fast tier)
    nox -s eval                           every suite, default profile (embedded data, CPU-sized)
    nox -s eval -- agreement              one suite
    nox -s eval -- agreement --profile full --device cuda
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).parent
VENV = ROOT / ".nox" / "shared"
STAMP = VENV / ".installed-from"
# The parity tests' CLIP_benchmark: the version DataComp's requirements.txt pins, whose code DataComp's published
# numbers come from (1.6.x builds the text classifier under bfloat16 autocast on a CPU). Its metadata asks for
# torch<2, so it is installed without its dependencies; what it imports is in the test extra.
PEERS_NO_DEPS = ["clip_benchmark==1.4.0"]
# `bench --parts peers` runs the linear probe beside clip_benchmark 1.6.2's (the newest: it sweeps the weight decay),
# installed beside the environment (harness.tools.bench_peers.probe_peer_path) so that the parity tests keep 1.4.0.
PEERS_BESIDE = {"clip_benchmark==1.6.2": VENV / "peers" / "clip_benchmark-1.6.2"}

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests"]


def _python(session: nox.Session) -> str:
    """The shared environment's python, (re)installing the project when pyproject.toml changed."""
    python = VENV / "bin" / "python"
    peers = " ".join([*PEERS_NO_DEPS, *PEERS_BESIDE]).encode()
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + peers).hexdigest()
    if not python.exists():
        session.run(sys.executable, "-m", "venv", str(VENV), external=True)
    if not STAMP.exists() or STAMP.read_text() != want:
        session.run(str(python), "-m", "pip", "install", "-q", "-e", f"{ROOT}[test,hf]", external=True)
        session.run(str(python), "-m", "pip", "install", "-q", "--no-deps", *PEERS_NO_DEPS, external=True)
        for requirement, target in PEERS_BESIDE.items():
            session.run(str(python), "-m", "pip", "install", "-q", "--no-deps", "--upgrade", "--target", str(target),
                        requirement, external=True)
        STAMP.write_text(want)
    else:
        session.log(f"reusing {VENV} (pyproject.toml unchanged)")
    return str(python)


def _env() -> dict[str, str]:
    # No hub at run time: what is not cached locally must fail fast instead of hanging on the network.
    return {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            "HF_DATASETS_OFFLINE": os.environ.get("HF_DATASETS_OFFLINE", "1")}


@nox.session
def tests(session: nox.Session) -> None:
    """Run the tests on CPU (pytest arguments after --)."""
    python = _python(session)
    session.run(python, "-m", "pytest", *(session.posargs or ["-q"]), external=True, env=_env())


@nox.session
def eval(session: nox.Session) -> None:
    """Run the suites and write results/ (arguments after -- go to `python -m harness run`). On a CPU the suites
    that split into units run as one one-thread process per core (`-- --processes 1` turns that off)."""
    python = _python(session)
    args = list(session.posargs)
    if not any(a.startswith("--processes") for a in args):
        args += ["--processes", "auto"]
    session.run(python, "-m", "harness", "run", *args, external=True, env=_env())


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the project."""
    python = _python(session)
    session.run(python, "-m", "ruff", "check", "harness", "suites", "tests", "noxfile.py", external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """Speed and memory benchmarks into results/bench_*.{csv,md,png} (arguments after -- go to
    `python -m harness bench`: --device, --dtype, --out, --parts, --quick)."""
    python = _python(session)
    session.run(python, "-m", "harness", "bench", *session.posargs, external=True, env=_env())


@nox.session
def gpu(session: nox.Session) -> None:
    """The one-command GPU check (`-- --quick` a smoke check; `-- --device cpu` every step at a size that fits CI):
    tables into results/gpu (or the folder after -- --out). Sized for ~5 minutes on one H100; on an H200 it took
    longer (results/gpu/RUN.md). Exits 1 when a verdict row fails."""
    python = _python(session)
    session.run(python, "-m", "harness", "gpu-check", *session.posargs, external=True, env=_env())
