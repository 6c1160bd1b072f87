"""The reference-vs-library rows of linear_probe and zero_shot are verdicts: a reference converted wrongly flips
predictions where round-off cannot, its row fails, and `run` exits 1; a correct conversion passes. And the rule by
hand: a flip counts against it only at a margin above twice the tolerance of the image's largest logit."""

import json
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

import harness.convert
from harness.methods import paired
from harness.tools import cli
from tests.test_data import write_image_folder
from tests.test_suite_linear_probe import SUITE as PROBE_SUITE


def test_the_flip_rule_by_hand():
    pred, other = np.array([0, 1, 2, 3]), np.array([0, 2, 2, 1])  # images 1 and 3 differ
    scale = np.array([10.0, 10.0, 10.0, 10.0])
    margin = np.array([5.0, 1e-4, 3.0, 2e-4 + 1e-9])  # 2 * 1e-5 * 10 = 2e-4: image 1 within, image 3 beyond
    assert paired.flips_beyond_round_off(pred, other, margin, scale, 1e-5) == 1
    lib = {"predictions": pred, "margin": margin, "scale": scale}
    ok = paired.agreement_verdict(lib, {"predictions": pred}, 1e-6, "feature_max_rel_diff")
    assert ok["passed"] and ok["flips_beyond_round_off"] == 0
    assert not paired.agreement_verdict(lib, {"predictions": other}, 1e-6, "feature_max_rel_diff")["passed"]
    assert not paired.agreement_verdict(lib, {"predictions": pred}, 2e-5, "feature_max_rel_diff")["passed"]
    unjudged = paired.agreement_verdict(lib, {"predictions": other}, 1e-6, "x", autocast="bfloat16")
    assert np.isnan(unjudged["passed"]) and "not judged" in unjudged["agreement_rule"]


def _wrong(convert):
    """A conversion error: the reference's first block gets its attention projection's output scaled by 1.5."""
    def planted(model, *args, **kwargs):
        ref = convert(model, *args, **kwargs)
        blocks = ref.blocks if hasattr(ref, "blocks") else ref.visual.blocks
        with torch.no_grad():
            blocks[0].attn.proj.weight.mul_(1.5)
        return ref
    return planted


@pytest.mark.slow
def test_a_wrong_conversion_fails_the_linear_probe_run(tmp_path, capsys, monkeypatch):
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "tiny_probe.py").write_text(textwrap.dedent(PROBE_SUITE))
    args = ["run", "tiny_probe", "--device", "cpu", "--out", str(tmp_path / "out"), "--cache-dir",
            str(tmp_path / "cache"), "--suites-dir", str(suites), "--no-cache"]
    assert cli.main(args) == 0
    ref = pd.read_csv(tmp_path / "out" / "linear_probe.csv").iloc[1]
    assert ref["passed"] and ref["flips_beyond_round_off"] == 0
    monkeypatch.setattr(harness.convert, "from_timm", _wrong(harness.convert.from_timm))
    assert cli.main(args) == 1
    ref = pd.read_csv(tmp_path / "out" / "linear_probe.csv").iloc[1]
    assert not ref["passed"] and ref["flips_beyond_round_off"] > 0 and ref["feature_max_rel_diff"] > 1e-5
    assert "verdict row(s) failed" in capsys.readouterr().err


@pytest.mark.slow
def test_a_wrong_conversion_fails_the_zero_shot_run(tmp_path, capsys, monkeypatch):
    write_image_folder(tmp_path / "data", classes=("cat", "dog", "bird", "fish"), per_class=6, corrupt=False)
    model = {"id": "s32", "model": "open_clip:ViT-S-32", "with_reference": True,
             "kwargs": {"force_image_size": 32, "vision_cfg": {"image_size": 32, "layers": 2},
                        "text_cfg": {"layers": 2}}}
    args = ["run", "zero_shot", "--device", "cpu", "--out", str(tmp_path / "out"), "--no-cache",
            "--set", "models=" + json.dumps([model]),
            "--set", "datasets=" + json.dumps([f"imagefolder:{tmp_path / 'data'}"])]
    assert cli.main(args) == 0
    ref = pd.read_csv(tmp_path / "out" / "zero_shot.csv").set_index("library").loc["reference"]
    assert ref["passed"] and ref["predictions_differ"] == 0
    monkeypatch.setattr(harness.convert, "from_open_clip", _wrong(harness.convert.from_open_clip))
    assert cli.main(args) == 1
    ref = pd.read_csv(tmp_path / "out" / "zero_shot.csv").set_index("library").loc["reference"]
    assert not ref["passed"]
    assert "verdict row(s) failed" in capsys.readouterr().err
