"""The linear-probe suite end to end on a small declared config (real timm model, real data)."""

import re
import textwrap

import pandas as pd
import pytest

from harness.tools import cli

SUITE = '''
"""Linear probe on a small subset (test suite)."""
NAME = "tiny_probe"
VERSION = 1
EVALUATOR = "linear_probe"

def get_config(profile):
    return {"datasets": [{"name": "fashion_mnist", "train_per_class": 30, "test_per_class": 20}],
            "models": [{"id": "vit_p7", "model": "timm:vit_tiny_patch16_224",
                        "kwargs": {"img_size": 28, "patch_size": 7, "depth": 2},
                        "data_cfg": {"input_size": [3, 28, 28], "crop_pct": 1.0}, "with_reference": True}],
            "batch_size": 100, "val_fraction": 0.2}
'''


@pytest.mark.slow
def test_linear_probe_suite_end_to_end(tmp_path, capsys):
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "tiny_probe.py").write_text(textwrap.dedent(SUITE))
    args = ["run", "tiny_probe", "--device", "cpu", "--out", str(tmp_path / "out"), "--cache-dir",
            str(tmp_path / "cache"), "--suites-dir", str(suites)]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    # each unit logs its phases as each ends (a run stopped at its limit still tells where its time went)
    for phase in ("extraction", "sweep", "final fit", "scikit-learn check"):
        assert re.search(rf"linear_probe \S+ on fashion_mnist: {phase} \d+\.\d s", err), phase
    df = pd.read_csv(tmp_path / "out" / "linear_probe.csv")
    assert df["library"].tolist() == ["timm", "reference"]
    assert df["train_images"].tolist() == [300, 300] and df["test_images"].tolist() == [200, 200]
    lib, ref = df.iloc[0], df.iloc[1]
    assert ref["prediction_agreement"] == 1.0 and ref["top1"] == lib["top1"]  # image for image
    assert abs(lib["sklearn_diff"]) <= 0.2 and pd.isna(ref["sklearn_diff"])  # checked once, on the library's features
    assert ref["feature_max_rel_diff"] < 1e-4  # float32 round-off between the two feature sets
    assert df["top1"].between(30, 100).all()  # far above chance (10 %) even with random weights
    assert "git_sha" in df and "weights_hash" in df
