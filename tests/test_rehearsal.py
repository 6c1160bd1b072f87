"""The full profile rehearsed: an ImageNet-shaped tree of 1,000 real WordNet ids and library-format checkpoints
(written by `python -m harness rehearsal`), then the full profile of every suite through --overrides, unchanged
but for models shrunk with --set so that a CPU gets through (1,000 classes × 80 templates is zero-shot's real
shape)."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness import cli, data, rehearsal

TINY_TEXT = {"layers": 1, "width": 64, "heads": 2}
TINY_VISION = {"layers": 1, "width": 64, "head_width": 32}
CLIP = {"library": "open_clip", "name": "ViT-B-32", "with_reference": True,
        "kwargs": {"vision_cfg": TINY_VISION, "text_cfg": TINY_TEXT, "embed_dim": 32}}
SHRINK = {
    "agreement.models": ["vit_tiny_patch16_224"], "agreement.gradient_models": [],
    "agreement.clip.models": ["ViT-S-32"], "agreement.clip.gradient_models": [], "agreement.clip.timm_towers": {},
    "agreement.dtypes": ["float32"], "agreement.photos": ["astronaut"], "agreement.random_inputs": 1,
    "agreement.attention.seq_lens": [7], "agreement.attention.heads": [2],
    "linear_probe.models": [
        {"id": "vit_base_patch16_224.augreg_in21k", "library": "timm", "name": "vit_base_patch16_224.augreg_in21k",
         "kwargs": {"depth": 1, "embed_dim": 64, "num_heads": 2}, "weights": "pretrained", "with_reference": True},
        {"id": "ViT-B-32/openai", **CLIP, "weights": "openai"}],
    "zero_shot.models": [{"id": "ViT-B-32/openai", **CLIP, "weights": "openai", "published_top1": 63.32}],
    "data_scale.sizes_per_class": [1], "data_scale.seeds": [0], "data_scale.data.test_per_class": 1,
    "data_scale.data.workers": 0, "data_scale.step_policy": {"min_steps": 2, "epochs": 1},
    "data_scale.architectures.0.kwargs.depth": 1, "data_scale.architectures.0.kwargs.width": 32,
    "data_scale.architectures.0.kwargs.mlp_dim": 64, "data_scale.architectures.0.kwargs.heads": 2,
    "data_scale.architectures.1.kwargs.widths": [8, 8, 8],
    "data_scale.architectures.2.kwargs.embed_dim": 32, "data_scale.architectures.2.kwargs.depth": 1,
    "data_scale.architectures.2.kwargs.num_heads": 2, "data_scale.architectures.2.sizes": [1],
    "linear_probe.workers": 2, "zero_shot.workers": 2, "linear_probe.batch_size": 128, "zero_shot.batch_size": 128,
}


def test_tree_is_deterministic_and_shaped_like_imagenet(tmp_path):
    a = rehearsal.write_tree(tmp_path / "a", classes=3, train_per_class=4, val_per_class=2, seed=5)
    rehearsal.write_tree(tmp_path / "b", classes=3, train_per_class=4, val_per_class=2, seed=5)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert a["train_images"] == 12 and a["val_images"] == 6 + 5
    assert sorted(p.name for p in (tmp_path / "a" / "train").iterdir()) == data.imagenet_wnids()[:3]
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
    sets = [f"{k}={json.dumps(v)}" for k, v in SHRINK.items()]
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
