"""Per-image predictions and paired comparisons: the statistics by hand, and `python -m harness diff` on two runs
of a suite that differ by a planted change (the gate fails) or by round-off (the gate passes)."""

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image
from scipy import stats

from harness.evals.data_scale import pairs
from harness.infra import predictions
from harness.methods import paired
from harness.tools import cli
from harness.tools import diff as diff_tool


# ------------------------------------------------------------------------------------------- statistics
def test_mcnemar_by_hand():
    a = np.array([1] * 9 + [0] * 1 + [1] * 20 + [0] * 5, bool)  # 9 images only A gets right, 1 only B
    b = np.array([0] * 9 + [1] * 1 + [1] * 20 + [0] * 5, bool)
    m = paired.mcnemar(a, b)
    # exact two-sided: 2 · P(X ≤ 1), X ~ Binomial(10, 1/2) = 2 · (1 + 10) / 1024
    # one-sided: B worse P(X <= 1) = 11/1024; B better P(X >= 1) = 1023/1024
    assert m == {"only_a_correct": 9, "only_b_correct": 1, "mcnemar_p": pytest.approx(22 / 1024, abs=1e-15),
                 "p_worse": pytest.approx(11 / 1024, abs=1e-15), "p_better": pytest.approx(1023 / 1024, abs=1e-15)}
    assert m["mcnemar_p"] == pytest.approx(stats.binomtest(1, 10, 0.5).pvalue, abs=1e-15)
    assert paired.mcnemar(b, a)["mcnemar_p"] == m["mcnemar_p"]  # symmetric
    assert paired.mcnemar(a, a) == {"only_a_correct": 0, "only_b_correct": 0, "mcnemar_p": 1.0, "p_worse": 1.0,
                                    "p_better": 1.0}
    with pytest.raises(ValueError, match="same images"):
        paired.mcnemar(a, b[:-1])


def test_bootstrap_and_paired_t_by_hand():
    a = np.zeros(200, bool)
    b = np.zeros(200, bool)
    b[:20] = True  # B right on 20 more images: +10 points
    d = paired.bootstrap_diff(a, b, reps=4000, seed=0)
    assert d["diff"] == pytest.approx(10.0)
    # the resampled mean of a 10% Bernoulli: sd = sqrt(0.1·0.9/200) = 2.12 points, so ±1.96 sd ≈ ±4.2 points
    assert 5.0 < d["diff_ci_low"] < 7.0 and 13.0 < d["diff_ci_high"] < 15.0
    assert paired.bootstrap_diff(a, a) == {"diff": 0.0, "diff_ci_low": 0.0, "diff_ci_high": 0.0}
    mean, lo, hi = paired.paired_t(np.array([1.0, 2.0, 3.0]))  # sd 1, n 3
    half = stats.t.ppf(0.975, 2) / np.sqrt(3)
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert paired.moved_classes(np.array([0, 0, 1, 1, 2]), np.array([1, 1, 0, 1, 1], bool),
                                np.array([0, 0, 1, 1, 1], bool)) == "0: -2, 1: +1"


def test_data_scale_pairs_are_paired_by_seed():
    runs = pd.DataFrame({"architecture": ["vit"] * 3 + ["cnn"] * 3, "train_images": [100] * 6,
                         "seed": [0, 1, 2] * 2, "test_accuracy": [70.0, 72.0, 74.0, 60.0, 63.0, 66.0]})
    p = pairs(runs, ["vit", "cnn"]).iloc[0]
    d = np.array([10.0, 9.0, 8.0])  # seed by seed: a narrower interval than the two runs' spreads (2 and 3)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert (p.architecture_a, p.architecture_b, p.seeds, p.a_wins, p.verdict) == ("vit", "cnn", 3, 3, "a ahead")
    assert (p.diff_mean, p.diff_ci95_low, p.diff_ci95_high) == pytest.approx((9.0, 9.0 - half, 9.0 + half))


# -------------------------------------------------------------------------------------- two runs, diffed
def _images(root, per_class=12, size=16, seed=0):
    """4 classes told apart by colour: an ImageFolder a probe on random ViT features learns almost perfectly."""
    rng = np.random.default_rng(seed)
    colours = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220], [220, 220, 40]])
    for split in ("train", "test"):
        for c, colour in enumerate(colours):
            (root / split / f"class_{c}").mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(colour + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f"class_{c}" / f"{i}.png")
    return root


def _run(tmp_path, name, weights, capsys):
    spec = {"id": "vit", "model": "timm:vit_tiny_patch16_224", "weights": str(weights),
            "kwargs": {"img_size": 16, "patch_size": 8, "depth": 1},
            "data_cfg": {"input_size": [3, 16, 16], "crop_pct": 1.0}}
    out = tmp_path / name
    code = cli.main(["run", "linear_probe", "--device", "cpu", "--out", str(out), "--cache-dir",
                     str(tmp_path / "cache"), "--set", "models=" + json.dumps([spec]),
                     "--set", "datasets=" + json.dumps([f"imagefolder:{tmp_path / 'data'}"])])
    capsys.readouterr()
    assert code == 0
    return out


def test_diff_finds_a_planted_regression_and_passes_round_off(tmp_path, capsys):
    _images(tmp_path / "data")
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=1)
    good = model.state_dict()
    torch.save(good, tmp_path / "good.pt")
    # planted: a broken checkpoint, its patch embedding's weight zeroed (every image gives the same features; a
    # scale alone would not do: the blocks' LayerNorms undo it)
    torch.save({k: v * 0 if k == "patch_embed.proj.weight" else v for k, v in good.items()}, tmp_path / "weak.pt")
    # round-off: every weight moved by one part in 10^7
    g = torch.Generator().manual_seed(0)
    torch.save({k: v * (1 + 1e-7 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v
                for k, v in good.items()}, tmp_path / "noisy.pt")
    a, weak, noisy = (_run(tmp_path, n, tmp_path / f"{n}.pt", capsys) for n in ("good", "weak", "noisy"))

    table = pd.read_csv(a / "linear_probe.csv")
    rel = table.loc[0, "predictions"]
    assert rel.startswith("predictions/linear_probe/") and (a / rel).is_file()
    p = pd.read_parquet(a / rel)
    assert list(p.columns) == ["index", "label", "top1", "top2", "top3", "top4", "margin"]
    assert len(p) == 48 and (p.margin >= 0).all()
    assert (p.top1 == p.label).mean() * 100 == pytest.approx(table.loc[0, "top1"])

    # the planted regression: found, and the gate fails
    assert cli.main(["diff", str(a), str(weak), "--fail-if-worse", "--out", str(tmp_path / "d1")]) == 1
    d = pd.read_csv(tmp_path / "d1" / "diff.csv").iloc[0]
    assert d.verdict == "B worse" and d["diff"] < 0 and d.diff_ci_high < 0 and d.mcnemar_p < 0.05
    assert d.only_a_correct > d.only_b_correct and d.images == 48 and d.predictions_differ > 0
    assert cli.main(["diff", str(a), str(weak), "--out", str(tmp_path / "d1b")]) == 0  # no gate asked for
    # the reverse is an improvement, not a failure
    assert cli.main(["diff", str(weak), str(a), "--fail-if-worse", "--out", str(tmp_path / "d2")]) == 0
    assert pd.read_csv(tmp_path / "d2" / "diff.csv").iloc[0].verdict == "B better"
    # round-off: the gate passes
    assert cli.main(["diff", str(a), str(noisy), "--fail-if-worse", "--out", str(tmp_path / "d3")]) == 0
    r = pd.read_csv(tmp_path / "d3" / "diff.csv").iloc[0]
    # (the same predictions: "no change"; a flipped image or two: not significant)
    assert r.verdict in (diff_tool.NO_CHANGE, "no significant change") and r.mcnemar_p > 0.05
    assert abs(r["diff"]) <= 100 * 2 / 48
    capsys.readouterr()
    # one row of each, named
    assert cli.main(["diff", f"{a}:linear_probe:0", f"{weak}:linear_probe:0", "--fail-if-worse", "--out",
                     str(tmp_path / "d4")]) == 1


def test_rows_on_other_images_are_refused(tmp_path):
    rows = []
    for name, index in (("a", np.arange(10)), ("b", np.arange(1, 11))):
        row = predictions.attach({"model": "m", "library": "timm", "dataset": "x", "top1": 100.0}, index,
                                 np.zeros(10, int), np.zeros((10, 2), int), np.ones(10))
        (out := [r for r in predictions.write([row], tmp_path / name, "suite")])
        pd.DataFrame(out).to_csv(tmp_path / name / "t.csv", index=False)
        rows.append(out[0])
    assert rows[0]["predictions"] == rows[1]["predictions"]  # the same row of two runs: the same id
    df = diff_tool.diff(str(tmp_path / "a"), str(tmp_path / "b"))
    assert df.loc[0, "refused"] == "images differ: A has 10, B has 10, 9 in both (the same images, in the same " \
                                   "order, are needed)"
    assert "verdict" not in df or df.verdict.isna().all()
    with pytest.raises(Exception, match="no table there names per-image predictions"):
        diff_tool.diff(str(tmp_path), str(tmp_path / "b"))
