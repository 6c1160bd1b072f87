"""Zero-shot classifier, metrics and the zero-shot suite, against real open_clip models and real data."""

import textwrap

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch

import harness
from harness.evals import zero_shot as zs_eval
from harness.infra.suite import Context
from harness.methods import clip_runs
from harness.methods.classifier import classification_metrics, retrieval_recall, zero_shot_classifier
from harness.models.open_clip import create as load_open_clip
from harness.tools import cli
from tests.test_clip import small_open_clip
from tests.test_data import write_image_folder

CLASSES = ["cat", "dog", "rocket", "astronaut", "teapot", "sneaker", "coat", "bag", "trouser", "sandal", "dress"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "itap of a {}."]
CALLABLE_TEMPLATES = [lambda c: f"a photo of a {c}.", lambda c: f"a {c} in the snow."]  # open_clip takes both kinds


@pytest.mark.parametrize("name,templates", [("ViT-B-32", TEMPLATES), ("ViT-S-16", CALLABLE_TEMPLATES)])
def test_classifier_equals_open_clip_and_reference(name, templates):
    TEMPLATES = templates  # noqa: N806
    model = small_open_clip(name)
    tok = open_clip.get_tokenizer(name)
    ours = zero_shot_classifier(model, tok, CLASSES, TEMPLATES)
    theirs = open_clip.build_zero_shot_classifier(model, tok, CLASSES, TEMPLATES)
    assert ours.shape == (model.text_projection.shape[1], len(CLASSES))
    assert (ours - theirs).abs().max() <= 1e-6
    assert torch.allclose(ours.norm(dim=0), torch.ones(len(CLASSES)), atol=1e-6)
    ref = harness.from_open_clip(model)
    assert (zero_shot_classifier(ref, tok, CLASSES, TEMPLATES) - theirs).abs().max() <= 1e-6
    # float64: the two implementations agree to round-off
    ref64, lib64 = harness.from_open_clip(model.double()), model
    d = zero_shot_classifier(ref64, tok, CLASSES, TEMPLATES) - open_clip.build_zero_shot_classifier(
        lib64, tok, CLASSES, TEMPLATES)
    assert d.abs().max() <= 1e-12


def test_classifier_refuses_empty_input():
    with pytest.raises(ValueError, match="at least one"):
        zero_shot_classifier(small_open_clip("ViT-S-32"), open_clip.get_tokenizer("ViT-S-32"), [], TEMPLATES)


def test_classification_metrics_by_hand():
    classifier = torch.eye(3)  # class c <-> axis c
    images = torch.tensor([[5.0, 1, 0], [0, 2, 1], [0, 3, 1], [1, 0, 0.5]])  # predictions 0, 1, 1, 0
    m = classification_metrics(images, classifier, np.array([0, 1, 2, 2]))
    assert m["top1"] == pytest.approx(50.0) and m["top5"] == pytest.approx(100.0)
    assert m["mean_per_class_recall"] == pytest.approx(100 * (1 + 1 + 0) / 3)
    assert m["predictions"].tolist() == [0, 1, 1, 0]


def test_retrieval_recall_by_hand():
    images = torch.eye(3)
    # captions 0, 1 describe image 0; caption 2 image 1; caption 3 image 2 but looks like image 1
    texts = torch.tensor([[1.0, 0.1, 0], [0.9, 0, 0.2], [0, 1, 0], [0, 1, 0.1]])
    r = retrieval_recall(images, texts, np.array([0, 0, 1, 2]), ks=(1, 2))
    # image -> text R@1: image 0 gets caption 0 (its own), image 1 caption 2 (own), image 2 caption 1 (not own)
    assert r["image_to_text_R@1"] == pytest.approx(200 / 3)
    # text -> image R@1: captions 0, 1, 2 find their image, caption 3 finds image 1
    assert r["text_to_image_R@1"] == pytest.approx(75.0)
    assert r["text_to_image_R@2"] == pytest.approx(100.0)


def test_to_open_clip_round_trip():
    cfg = clip_runs.build_clip({"model": {"embed_dim": 32, "vision": {"image_size": 28, "patch_size": 7, "in_chans": 3,
                                                                     "width": 32, "depth": 2, "heads": 4,
                                                                     "mlp_dim": 64},
                                        "text": {"context_length": 16, "width": 32, "depth": 1, "heads": 2,
                                                 "mlp_dim": 64}}})
    ref = cfg.double().eval()
    oc = harness.convert.to_open_clip(ref)
    assert type(oc).__name__ == "CLIP" and next(oc.parameters()).dtype == torch.float64
    x = torch.randn(3, 3, 28, 28, dtype=torch.float64)
    t = clip_runs.tokenizer(16)(["a photo of a large dark bag.", "a coat."])
    with torch.no_grad():
        assert torch.allclose(oc.encode_image(x), ref.encode_image(x), rtol=0, atol=1e-12)
        assert torch.allclose(oc.encode_text(t), ref.encode_text(t), rtol=0, atol=1e-12)
    back = harness.from_open_clip(oc)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ref.state_dict().values()))


SUITE = '''
"""Zero-shot on a tiny self-trained CLIP (test suite)."""
import importlib.util, pathlib
NAME = "tiny_zero_shot"
VERSION = 1
EVALUATOR = "zero_shot"

def get_config(profile):
    spec = importlib.util.spec_from_file_location("zs", pathlib.Path({repo!r}) / "suites" / "zero_shot.py")
    zs = importlib.util.module_from_spec(spec); spec.loader.exec_module(zs)
    cfg = zs.get_config("default")
    cfg["data"].update(test_per_class=20, retrieval_per_class=10)
    cfg["train"]["data"]["per_class"] = 60
    cfg["train"]["recipe"].update(steps=40, batch_size=64)
    cfg["train"]["model"]["vision"].update(depth=1)
    cfg["probe"]["train_per_class"] = 20
    return cfg
'''


@pytest.mark.slow
def test_zero_shot_suite_end_to_end(tmp_path, capsys):
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "tiny_zero_shot.py").write_text(textwrap.dedent(SUITE.format(repo=str(harness.infra.results.REPO_ROOT))))
    args = ["run", "tiny_zero_shot", "--device", "cpu", "--out", str(tmp_path / "out"), "--cache-dir",
            str(tmp_path / "cache"), "--suites-dir", str(suites)]
    assert cli.main(args) == 0
    df = pd.read_csv(tmp_path / "out" / "zero_shot.csv")
    assert df["task"].tolist() == ["training", "classification", "classification", "linear probe", "retrieval",
                                   "classification"]
    train = df.iloc[0]
    assert train["temperature"] > 0 and train["train_images"] == 600 and train["steps"] == 40
    oc = df[df.library == "open_clip"].iloc[0]
    held_out = df[(df.library == "reference") & df.templates.str.startswith("held-out")
                  & (df.task == "classification")].iloc[0]
    assert oc["classifier_max_abs_diff"] <= 1e-6 and oc["prediction_agreement"] == 1.0
    assert oc["top1"] == held_out["top1"] and held_out["images"] == 200
    ret = df[df.task == "retrieval"].iloc[0]
    assert ret["images"] == 100 and 0 <= ret["image_to_text_R@1"] <= ret["image_to_text_R@10"] <= 100
    assert "git_sha" in df and (tmp_path / "out" / "zero_shot.md").exists()
    # a second run trains nothing and reads every unit back
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "reused 2 of 2 finished units" in capsys.readouterr().out


def test_full_profile_path_with_local_weights_and_image_folder(tmp_path):
    """The pretrained path, offline: open_clip pretrained=<file> and an ImageFolder in ImageNet's layout."""
    write_image_folder(tmp_path / "imagenet", corrupt=False)
    weights = tmp_path / "vit_s_32.pt"
    torch.save(load_open_clip("ViT-S-32", "random", seed=1).state_dict(), weights)
    config = {"datasets": [{"name": "imagenet", "root": str(tmp_path / "imagenet"),
                            "templates": ["a photo of a {}.", "a {}."]}], "batch_size": 8,
              "published_source": "a test",
              "models": [{"id": "s32", "model": "open_clip:ViT-S-32", "weights": str(weights),
                          "with_reference": True, "published_top1": 50.0}]}
    ctx = Context(device=torch.device("cpu"), cache_dir=tmp_path / "cache")
    rows = zs_eval.run_unit("eval:s32", config, ctx)
    assert [r["library"] for r in rows] == ["open_clip", "reference"]
    assert all(r["images"] == 12 for r in rows)
    assert rows[0]["classifier_max_abs_diff"] <= 1e-6 and rows[1]["classifier_max_abs_diff"] <= 1e-5
    assert rows[1]["prediction_agreement"] == 1.0
    table = zs_eval.tables(rows, config)[0].df
    assert (table["diff_vs_published"] == table["top1"] - 50.0).all()
