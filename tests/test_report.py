"""results/index.html (issue 44, ask 4): the report of a results folder, opened in headless Chromium (Debian's
chromium package, which .ci/run installs where it is missing): it loads with no console error, its screenshot is
not blank, every table of the folder is on it, and a planted failing verdict shows at the top."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.infra.results import REPO_ROOT
from harness.tools.report import render, verdicts, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def folder(tmp_path):
    """A copy of the committed results folder's tables and plots."""
    out = tmp_path / "results"
    out.mkdir()
    for path in (REPO_ROOT / "results").iterdir():
        if path.suffix in (".csv", ".png"):
            shutil.copy(path, out / path.name)
    return out


def _chromium(page, tmp_path, *args) -> subprocess.CompletedProcess:
    assert CHROMIUM, "chromium is not installed (.ci/run installs Debian's chromium package)"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
                           *args, page.as_uri()], capture_output=True, text=True, timeout=180)


def test_the_report_loads_in_chromium_with_every_table_and_no_console_error(folder, tmp_path):
    page = write_report(folder)
    dom = _chromium(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for csv in folder.glob("*.csv"):
        assert f'id="table-{csv.stem}"' in dom.stdout, csv.stem
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    shot = _chromium(page, tmp_path, f"--screenshot={tmp_path / 'shot.png'}", "--window-size=1280,1600")
    assert shot.returncode == 0, shot.stderr[-2000:]
    pixels = np.asarray(Image.open(tmp_path / "shot.png").convert("L"), dtype=np.float64)
    assert pixels.std() > 5, pixels.std()  # text, tables and plots on white: not one colour
    assert "every judged row passes" in dom.stdout  # the committed results pass


def test_a_planted_failing_verdict_shows_at_the_top(folder, tmp_path):
    table = pd.read_csv(folder / "agreement.csv", low_memory=False)
    judged = table.index[table["passed"].astype(str) == "True"]
    table.loc[judged[0], "passed"] = False
    table.loc[judged[0], "model"] = "planted_model"
    table.to_csv(folder / "agreement.csv", index=False)
    families, failing = verdicts({"agreement": table})
    assert families["failed"].sum() == 1 and failing["model"].tolist() == ["planted_model"]
    page = write_report(folder)
    dom = _chromium(page, tmp_path, "--dump-dom").stdout
    top = dom[: dom.index('id="tables"')]
    assert "1 failing rows" in top and "planted_model" in top
    assert top.index("planted_model") < top.index('id="agreement"')  # before everything but the counts


def test_report_command_writes_the_page_and_refuses_a_folder_without_tables(folder, tmp_path):
    out = subprocess.run([sys.executable, "-m", "harness", "report", str(folder)], capture_output=True, text=True,
                         timeout=300, cwd=REPO_ROOT)
    assert out.returncode == 0 and (folder / "index.html").is_file(), out.stderr[-2000:]
    (tmp_path / "empty").mkdir()
    out = subprocess.run([sys.executable, "-m", "harness", "report", str(tmp_path / "empty")], capture_output=True,
                         text=True, timeout=300, cwd=REPO_ROOT)
    assert out.returncode == 2 and "not a results folder" in out.stderr


def test_the_page_has_no_script_and_no_address_outside_itself(folder):
    page = render(folder)
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page


def test_what_the_page_must_not_hide(folder, tmp_path):
    """An unreadable table, a folder that judged nothing, a skipped row (no failure, as run counts it), the gate's
    worse and refused rows, and an infinite error in a block: each said, none hidden, none a crash."""
    (folder / "broken.csv").write_bytes(b"a,passed\n1,False\n\xff\xfe,x,y\n")
    page = render(folder)
    assert "unreadable tables" in page and "broken.csv" in page and "every judged row passes" not in page
    empty = tmp_path / "empty"
    empty.mkdir()
    pd.DataFrame({"model": ["m"], "passed": [None]}).to_csv(empty / "t.csv", index=False)
    assert "no verdicts" in render(empty)
    skipped = pd.DataFrame({"model": ["a", "b"], "passed": [False, True], "result": ["skipped", "pass"]})
    families, failing = verdicts({"t": skipped})
    assert families["failed"].sum() == 0 and families["passed"].sum() == 1 and failing.empty
    gate = pd.DataFrame({"model": ["a", "b", "c", "d"], "verdict": ["B worse", "no change", None, "not judged: x"],
                         "refused": [None, None, "lost seed", None]})
    (empty / "diff").mkdir()
    gate.to_csv(empty / "diff" / "diff.csv", index=False)
    families, failing = verdicts({"diff_diff": gate})
    assert families["failed"].sum() == 2 and families["passed"].sum() == 1
    assert "2 failing rows" in render(empty)
    blocks = pd.read_csv(folder / "agreement_blocks.csv", low_memory=False)
    blocks.loc[blocks.index[0], "rel_err"] = float("inf")
    blocks.loc[blocks.index[1], "model"] = None
    blocks.to_csv(folder / "agreement_blocks.csv", index=False)
    assert "<svg" in render(folder)
