"""The data-scale suite end to end on a tiny declared config: real training, real data, a few steps."""

import textwrap

import pandas as pd
import pytest
import torch
from scipy.stats import binom, t

from harness.evals import data_scale
from harness.infra import checkpoints
from harness.methods.scale_runs import build_architecture
from harness.methods.train import Recipe, augment, lr_at, train
from harness.reference.cnn import SmallResNet
from harness.tools import cli

SUITE = '''
"""Data scale, tiny (test suite)."""
NAME = "tiny_scale"
VERSION = 1
EVALUATOR = "data_scale"
VIT = dict(image_size=28, patch_size=7, in_chans=1, num_classes=10, width=32, depth=1, mlp_dim=64, heads=2)

def get_config(profile):
    return {"data": {"name": "fashion_mnist", "test_per_class": 50, "subset_seed": 0},
            "sizes_per_class": [5, 20], "seeds": [0, 1],
            "architectures": [
                {"id": "vit", "kind": "reference_vit", "kwargs": VIT},
                {"id": "cnn", "kind": "resnet", "kwargs": {"in_chans": 1, "widths": [8, 16, 16]}},
                {"id": "vit_timm", "kind": "timm_vit", "sizes": [20],
                 "kwargs": {"img_size": 28, "patch_size": 7, "in_chans": 1, "num_classes": 10, "embed_dim": 32,
                            "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}}],
            "compare": ["vit", "cnn"],
            "recipe": {"batch_size": 32, "lr": 1e-3, "weight_decay": 0.05, "warmup": 0.1,
                       "label_smoothing": 0.1, "pad": 2, "flip": True},
            "step_policy": {"min_steps": 100, "epochs": 20}}
'''


@pytest.mark.slow
def test_data_scale_suite_end_to_end_and_resume(tmp_path, capsys):
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "tiny_scale.py").write_text(textwrap.dedent(SUITE))
    out = tmp_path / "out"
    args = ["run", "tiny_scale", "--device", "cpu", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
            "--suites-dir", str(suites)]
    assert cli.main(args) == 0
    runs = pd.read_csv(out / "data_scale_runs.csv")
    assert len(runs) == 2 * (2 * 2) + 2  # vit and cnn: 2 sizes × 2 seeds each; timm: 1 size × 2 seeds
    assert set(runs["train_images"]) == {50, 200}
    assert runs.groupby(["architecture", "train_images"])["seed"].nunique().eq(2).all()
    # every run learned: a model that learned nothing scores chance (10%) on the 500 balanced test images, a
    # guesser at most the 99.9% quantile of Binomial(500, 0.1) (14.2%; 10 runs: 1% family-wise); measured 22-41%
    assert (runs["test_images"] == 500).all()
    assert (runs["test_accuracy"] > 100 * binom.ppf(0.999, 500, 0.1) / 500).all(), runs["test_accuracy"]
    # the step policy: max(100, ceil(20 epochs × n / 32)): 100 steps on 50 images, 125 on 200
    assert runs.set_index("train_images")["steps"].groupby(level=0).first().to_dict() == {50: 100, 200: 125}
    summary = pd.read_csv(out / "data_scale.csv")
    assert (summary["seeds"] == 2).all() and (summary["ci95_low"] <= summary["accuracy_mean"]).all()
    assert (out / "data_scale.png").stat().st_size > 1000
    assert "data_scale" in (out / "README.md").read_text()
    assert "Finding:" in (out / "data_scale.md").read_text()
    model, meta = checkpoints.load(runs["checkpoint"].iloc[0], lambda m: build_architecture(m["arch"]))
    assert meta["unit"] == runs["unit"].iloc[0] and sum(p.numel() for p in model.parameters()) == runs["params"].iloc[0]

    capsys.readouterr()
    assert cli.main(args) == 0  # nothing changed: every run is reused, none retrained
    assert "reused 10 of 10" in capsys.readouterr().out
    again = pd.read_csv(out / "data_scale_runs.csv")
    pd.testing.assert_series_equal(again["test_accuracy"], runs["test_accuracy"])


def test_same_seed_same_numbers(tmp_path):
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    accs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = SmallResNet(1, 10, (8, 8, 8))
        train(model, x, y, Recipe(steps=3, batch_size=16), seed=3)
        accs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*accs))


def test_schedule_and_augmentation():
    r = Recipe(steps=100, lr=1.0, warmup=0.1)
    assert lr_at(0, r) == 0.1 and lr_at(9, r) == 1.0 and lr_at(99, r) < 0.01
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28)
    out = augment(x, Recipe(pad=2, flip=True), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(augment(x, Recipe(pad=0, flip=False), torch.Generator()), x)  # no augmentation: unchanged
    assert out.abs().sum() <= x.abs().sum()  # a shifted crop with zero padding only drops pixels


@pytest.mark.parametrize("seeds", [2, 3, 10, 11, 30])
def test_interval_uses_students_t_for_any_number_of_seeds(seeds):
    """The 95% interval's half-width is t(0.975; n - 1) × sd / √n for every n (11 seeds: 2.228, not 1.96)."""
    acc = 70 + torch.arange(seeds, dtype=torch.float64).numpy()
    runs = pd.DataFrame({"architecture": "v", "train_images": 100, "fraction": 0.1, "seed": range(seeds),
                         "test_accuracy": acc, "params": 1, "flops_per_image": 1, "steps": 1, "epochs": 1.0,
                         "train_seconds": 1.0})
    row = data_scale.summary(runs).iloc[0]
    half = t.ppf(0.975, seeds - 1) * acc.std(ddof=1) / seeds ** 0.5
    assert row["ci95_high"] - row["accuracy_mean"] == pytest.approx(half, rel=1e-9)
    assert seeds != 11 or round(t.ppf(0.975, 10), 3) == 2.228


def test_finding_says_where_curves_cross():
    s = pd.DataFrame({"architecture": ["v", "v", "c", "c"], "train_images": [10, 100, 10, 100],
                      "accuracy_mean": [50.0, 80.0, 60.0, 70.0]})
    assert "cross between 10 and 100" in data_scale.finding(s, "v", "c")
    s["accuracy_mean"] = [50.0, 65.0, 60.0, 70.0]
    text = data_scale.finding(s, "v", "c")
    assert "c is ahead at every size" in text and "narrows" in text


def test_full_profile_path_on_an_image_folder(tmp_path):
    """The ImageNet-subset path, offline: the full profile's config shrunk onto an ImageFolder written here
    (4 classes, of which 2 are chosen)."""
    import copy

    from harness.infra.suite import Context
    from harness.run.suites import load_suite
    from tests.test_data import write_image_folder

    write_image_folder(tmp_path / "imagenet", classes=("n01440764", "n01443537", "n01484850", "n01491361"),
                       per_class=4, corrupt=False)
    config = copy.deepcopy(load_suite("data_scale").get_config("full"))
    config["data"].update(root=str(tmp_path / "imagenet"), classes=2, image_size=16, test_per_class=3,
                          workers=0)
    config["sizes_per_class"] = [2, 4]
    config["architectures"][0]["kwargs"].update(image_size=16, patch_size=8, num_classes=2, width=16, depth=1,
                                                mlp_dim=32, heads=2)
    config["architectures"][1]["kwargs"].update(num_classes=2, widths=[4, 8, 8], blocks_per_stage=1)
    config["architectures"] = config["architectures"][:2]
    config["recipe"]["batch_size"] = 4
    config["step_policy"] = {"min_steps": 2, "epochs": 1}
    ctx = Context(device=torch.device("cpu"), cache_dir=tmp_path / "cache")
    rows = data_scale.run_unit("resnet_small:2:0", config, ctx) + data_scale.run_unit("vit_reference:4:1", config, ctx)
    assert [r["train_images"] for r in rows] == [4, 8]  # 2 classes × per_class
    assert rows[0]["test_images"] == 6 and rows[0]["fraction"] == 4 / 16  # 3 of each chosen class; 16 in train/
    # 6 test images of 2 classes cannot tell learning from chance (50%); what can be checked is that each accuracy
    # counts correct images among the 6
    for r in rows:
        correct = r["test_accuracy"] * r["test_images"] / 100
        assert correct == pytest.approx(round(correct)) and 0 <= correct <= r["test_images"]
