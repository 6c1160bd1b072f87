"""The full profile rehearsed: an ImageNet-shaped tree of 1,000 real WordNet ids and library-format checkpoints
(written by `python -m harness rehearsal`), then the full profile of every suite through --overrides, with the
changes harness.tools.rehearsal.small_models() gives (each suite's REHEARSAL) so that a CPU gets through: models
shrunk, fewer models (agreement:
one timm ViT and ViT-S-32; the linear probe: a one-block ViT-B/16 and ViT-B-32; zero-shot: ViT-B-32), agreement in
float32 only, on 2 inputs and one attention shape, data_scale at one size, one seed and two steps, smaller batches
and fewer workers. The data's shape stays the real one: 1,000
classes × 80 templates for zero-shot."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness import data
from harness.tools import cli, rehearsal


def test_tree_is_deterministic_and_shaped_like_imagenet(tmp_path):
    a = rehearsal.write_tree(tmp_path / "a", classes=3, train_per_class=4, val_per_class=2, seed=5)
    rehearsal.write_tree(tmp_path / "b", classes=3, train_per_class=4, val_per_class=2, seed=5)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert a["train_images"] == 12 and a["val_images"] == 6 + 5
    assert sorted(p.name for p in (tmp_path / "a" / "train").iterdir()) == data.imagenet.wnids()[:3]
    sizes = [rehearsal.image_size(np.random.default_rng(i)) for i in range(2000)]
    assert 0.7 < np.mean([s in ((500, 375), (375, 500)) for s in sizes]) < 0.8  # most are ImageNet's two sizes
    assert any(max(s) >= 1000 for s in sizes) and any(max(s) < 250 for s in sizes)
    modes = {p.name: Image.open(p).mode for p in (tmp_path / "a" / "val" / "n01440764").glob("odd_[cgp]*")}
    assert modes == {"odd_cmyk.JPEG": "CMYK", "odd_grayscale.JPEG": "L", "odd_png_named_jpeg.JPEG": "RGB"}
    assert Image.open(tmp_path / "a" / "val" / "n01440764" / "odd_png_named_jpeg.JPEG").format == "PNG"
    jpeg = Image.open(io.BytesIO((tmp_path / "a" / files[0]).read_bytes()))
    assert jpeg.format == "JPEG" and jpeg.mode == "RGB"


@pytest.mark.slow
def test_full_profile_of_every_suite_runs_on_the_rehearsal_tree(tmp_path, capsys):
    sets = [f"{k}={json.dumps(v)}" for k, v in rehearsal.small_models().items()]
    assert rehearsal.main([str(tmp_path / "r"), "--classes", "1000", "--train-per-class", "1", "--val-per-class",
                           "1", "--workers", "2", *sum([["--set", s] for s in sets], [])]) == 0
    overrides = json.loads((tmp_path / "r" / "overrides.json").read_text())
    assert set(overrides) == {"agreement", "data_scale", "linear_probe", "zero_shot"}
    assert all(m["weights"].startswith(str(tmp_path)) for m in overrides["zero_shot"]["models"])
    out = tmp_path / "out"
    overrides_file = str(tmp_path / "r" / "overrides.json")
    assert cli.main(["run", "--profile", "full", "--device", "cpu", "--overrides", overrides_file,
                     "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    zs = pd.read_csv(out / "zero_shot.csv")
    assert zs["images"].tolist() == [1003, 1003]  # 1,000 val images + 5 oddities, of which 2 unreadable
    assert zs["templates"].str.contains("(80)").all() and (zs["skipped_images"] == rehearsal.UNREADABLE_ODDITIES).all()
    assert zs.loc[zs.library == "reference", "prediction_agreement"].item() == 1.0
    assert (zs["diff_vs_published"] == zs["top1"] - 63.32).all()
    lp = pd.read_csv(out / "linear_probe.csv")
    assert lp["train_images"].tolist() == [1000] * 4 and set(lp["test_images"]) == {1003}
    assert (lp.loc[lp.library == "reference", "prediction_agreement"] == 1.0).all()
    ag = pd.read_csv(out / "agreement.csv")
    assert (ag["result"] == "pass").all() and set(ag["weights"]) == {"file", "pretrained"}
    ds = pd.read_csv(out / "data_scale_runs.csv")
    assert set(ds["train_images"]) == {100}  # ImageNet-100: every 10th class, one image each
    assert ds["test_images"].between(98, 100).all()  # one per class, less an unreadable oddity if one was drawn
