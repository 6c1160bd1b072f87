"""The common call in one line (issue 44, asks 3 and 5): `run SUITE --model M --dataset D`, and local folders
loaded without download messages."""

from __future__ import annotations

import json

import pandas as pd

from harness.tools import cli
from tests.test_one_engine import write_colours


def test_model_and_dataset_flags_are_the_suites_models_and_datasets(tmp_path, capsys):
    """--model / --dataset give what two --set flags give, and ColourCLIP's known answer (100%) says it ran."""
    root = write_colours(tmp_path / "colours")
    ckpt_free = "python:tests.models:colour_clip"
    one = ["run", "zero_shot", "--model", ckpt_free, "--dataset", f"imagefolder:{root}", "--out",
           str(tmp_path / "a"), "--cache-dir", str(tmp_path / "cache_a")]
    assert cli.main(one) == 0
    two = ["run", "zero_shot", "--set", f"models={json.dumps([ckpt_free])}", "--set",
           f"datasets={json.dumps([f'imagefolder:{root}'])}", "--out", str(tmp_path / "b"), "--cache-dir",
           str(tmp_path / "cache_b")]
    assert cli.main(two) == 0
    a, b = (pd.read_csv(tmp_path / d / "zero_shot.csv") for d in "ab")
    a, b = (t[t["dataset"] != "mean"] for t in (a, b))
    assert a["top1"].tolist() == b["top1"].tolist() == [100.0]
    assert set(a["model"]) == {"tests.models:colour_clip"}
    # a JSON object is one declaration, as in a suite file
    declared = json.dumps({"model": ckpt_free, "id": "colours"})
    assert cli.main(["run", "zero_shot", "--model", declared, "--dataset", f"imagefolder:{root}", "--out",
                     str(tmp_path / "c"), "--cache-dir", str(tmp_path / "cache_a")]) == 0
    assert "colours" in set(pd.read_csv(tmp_path / "c" / "zero_shot.csv")["model"])
    assert (tmp_path / "a" / "index.html").is_file()  # the run's report (tests/test_report.py opens one)
    captured = capsys.readouterr()
    assert "Downloading data" not in captured.err and "Generating train split" not in captured.err


def test_model_flag_is_refused_for_a_suite_that_takes_none(tmp_path, capsys):
    """One line naming the problem and the fix, exit 2, nothing written."""
    assert cli.main(["run", "data_scale", "--model", "timm:vit_tiny_patch16_224", "--out", str(tmp_path / "o")]) == 2
    assert "--model: suite data_scale takes no models" in capsys.readouterr().err
    assert cli.main(["run", "zero_shot", "--model", "{oops", "--out", str(tmp_path / "o")]) == 2
    assert "not a JSON object" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_model_flag_beside_a_set_of_the_same_list_is_refused(tmp_path, capsys):
    """Which would win is a guess (a SUITE.KEY --set, an item's --set, an overrides file): refused, exit 2."""
    for extra in (["--set", 'linear_probe.models=["timm:resnet18"]'], ["--set", 'models=["timm:resnet18"]'],
                  ["--set", "models.0.weights=random"]):
        args = ["run", "zero_shot", "linear_probe", "--model", "timm:vit_tiny_patch16_224", *extra,
                "--out", str(tmp_path / "o")]
        assert cli.main(args) == 2, extra
        assert "both set the suite's models" in capsys.readouterr().err
