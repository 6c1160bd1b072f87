"""Strict loading and the precision a row says (issue 41): checkpoints made here with save_pretrained, timm's and
open_clip's own formats, a Hugging Face hub cache written in huggingface_hub's layout. No hub, no mocks.

Each test plants what a user could plausibly hand the harness and that it used to take silently: a float16
checkpoint, a checkpoint missing a tensor, a checkpoint of a class with a projection, a processor the harness does
not replicate, transparent and palette images on the suites' data path, hub names as people write them, a SigLIP 2
tokenizer, a logit scale above 100.
"""

from __future__ import annotations

import json
import math
import os
import string
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image
from safetensors.torch import load_file, save_file

import harness
from harness import models
from harness.infra.results import REPO_ROOT
from harness.infra.suite import ConfigError
from tests.test_hf import TINY, clip_tokenizer, saved  # noqa: F401  (saved: the module's fixture)
from tests.test_your_model import write_my_data

VISION = dict(TINY, image_size=32, patch_size=8)


def _clip(folder, dtype=None):
    """A tiny CLIPModel with its processor and tokenizer; its weights rounded to float16 (so that a float16 and a
    float32 copy hold the same numbers)."""
    torch.manual_seed(0)
    model = tf.CLIPModel(tf.CLIPConfig(text_config=dict(TINY), vision_config=VISION, projection_dim=16))
    model = model.half() if dtype == "float16" else model.half().float()
    model.save_pretrained(folder)
    tf.CLIPProcessor(tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                     clip_tokenizer()).save_pretrained(folder)
    return folder


def _data(tmp_path):
    root = write_my_data(tmp_path / "my_data", per_class=4)
    return {"name": f"imagefolder:{root}", "classnames": str(root / "names.txt"),
            "templates": str(root / "templates.json")}


# ------------------------------------------------------------------------------------------------ precision


def test_a_float16_checkpoint_runs_in_float32_says_so_and_in_float16_when_asked(tmp_path):
    """transformers 5 loads a checkpoint in its config's dtype: a float16 CLIP ran in float16 while nothing said
    so. Its rows now say float32 and equal the float32 copy's exactly (the same numbers, upcast exactly); asked for
    float16, it runs in float16 and its rows say so."""
    full, half = _clip(tmp_path / "f32"), _clip(tmp_path / "f16", "float16")
    assert json.loads((half / "config.json").read_text())["dtype"] == "float16"
    data = _data(tmp_path)
    a = harness.evaluate(f"hf:{full}", [data], tasks=("zero_shot", "linear_probe"))
    b = harness.evaluate(f"hf:{half}", [data], tasks=("zero_shot", "linear_probe"))
    assert set(a["dtype"]) == set(b["dtype"]) == {"float32"}
    for metric in ("top1", "mean_per_class_recall"):
        assert a[metric].tolist() == b[metric].tolist()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(models.resolve(f"hf:{full}").encode_image(x), models.resolve(f"hf:{half}").encode_image(x))
    asked = models.resolve({"model": f"hf:{half}", "dtype": "float16"})
    assert models.dtype_of(asked) == "float16" and asked.id.endswith("-fp16")
    c = harness.evaluate(asked, [data], tasks=("zero_shot",))
    assert set(c["dtype"]) == {"float16"}


def test_random_weights_of_a_half_precision_config_are_float32(tmp_path):
    cfg = dict(VISION, dtype="float16")
    assert models.dtype_of(models.resolve({"model": "hf:ViTModel", "kwargs": cfg})) == "float32"
    assert models.dtype_of(models.resolve({"model": "hf:ViTModel", "kwargs": cfg, "dtype": "bfloat16"})) == "bfloat16"


def test_every_registry_loads_in_float32_unless_asked_and_the_row_reads_the_parameters(tmp_path):
    timm_spec = {"model": "timm:vit_tiny_patch16_224", "kwargs": {"img_size": 32, "depth": 1}}
    assert models.dtype_of(models.resolve(timm_spec)) == "float32"
    assert models.dtype_of(models.resolve({**timm_spec, "dtype": "bfloat16"})) == "bfloat16"
    clip = {"model": "open_clip:ViT-B-32", "kwargs": {"vision_cfg": {"layers": 1, "width": 64, "image_size": 32},
                                                     "text_cfg": {"layers": 1, "width": 64}}}
    assert models.dtype_of(models.resolve({**clip, "dtype": "float16"})) == "float16"
    # a python: factory that builds a half-precision module: loaded in float32, as the row says
    assert models.dtype_of(models.resolve("python:tests.models:tiny_half")) == "float32"
    with pytest.raises(ConfigError, match="dtype 'float8' is not one of"):
        models.parse({"model": "timm:vit_tiny_patch16_224", "dtype": "float8"})


def test_run_dtype_loads_a_suites_models_in_it(tmp_path):
    from harness.run import runner, suites

    suite = runner.load_suite("linear_probe")
    config = runner.with_dtypes(suite, {"models": ["timm:a", {"model": "timm:b", "dtype": "float32"}]},
                                ["bfloat16"])
    assert config["models"] == [{"model": "timm:a", "dtype": "bfloat16"}, {"model": "timm:b", "dtype": "float32"}]
    with pytest.raises(ConfigError, match="one dtype for its models"):
        runner.with_dtypes(suite, {"models": ["timm:a"]}, ["float32", "bfloat16"])
    with pytest.raises(ConfigError, match="names no models and no dtypes"):
        runner.with_dtypes(runner.load_suite("data_scale"), suites.config(runner.load_suite("data_scale"),
                                                                          "default"), ["bfloat16"])


# ---------------------------------------------------------------------------------------------- strict loads


def _without(folder, key):
    weights = load_file(folder / "model.safetensors")
    del weights[key]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def test_a_checkpoint_missing_a_tensor_or_holding_an_extra_one_is_refused_naming_it(tmp_path):
    """from_pretrained fills a missing tensor with random values and only logs it; the loading report refuses."""
    folder = _clip(tmp_path / "clip")
    _without(folder, "vision_model.encoder.layers.1.mlp.fc2.weight")
    with pytest.raises(ConfigError, match=r"1 missing .*vision_model\.encoder\.layers\.1\.mlp\.fc2\.weight"):
        models.resolve(f"hf:{folder}")
    extra = _clip(tmp_path / "extra")
    weights = load_file(extra / "model.safetensors")
    weights["vision_model.extra_head.weight"] = torch.zeros(3)
    save_file(weights, extra / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"1 unexpected: vision_model\.extra_head\.weight"):
        models.resolve(f"hf:{extra}")


def test_a_classification_checkpoint_loads_its_backbone_and_leaves_out_only_the_head(tmp_path):
    torch.manual_seed(0)
    full = tf.ViTForImageClassification(tf.ViTConfig(**VISION, num_labels=5)).eval()
    full.save_pretrained(tmp_path / "vitc")
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vitc")
    model = models.resolve(f"hf:{tmp_path / 'vitc'}")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.encode_image(x), full.vit(pixel_values=x).last_hidden_state[:, 0])
    _without(tmp_path / "vitc", "vit.encoder.layer.0.output.dense.bias")
    # transformers 5 names ViT's tensors its own way inside the model (encoder.layer.0.output.dense is
    # layers.0.mlp.fc2 there): the report, and the refusal, use the model's names
    with pytest.raises(ConfigError, match=r"1 missing .*layers\.0\.mlp\.fc2\.bias"):
        models.resolve(f"hf:{tmp_path / 'vitc'}")


def test_timm_and_python_files_missing_a_tensor_are_refused_whatever_num_classes_asks(tmp_path):
    """timm loads a file without checking when the declaration asks for another classifier (num_classes: it drops
    the head and loads the rest with strict=False); the registry builds the file's own head, loads strictly and
    then replaces it. torch's strict load names what a python: state_dict lacks."""
    import timm

    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2).eval()
    whole = source.state_dict()
    save_file(whole, tmp_path / "whole.safetensors")
    state = dict(whole)
    del state["blocks.1.mlp.fc2.weight"]
    save_file(state, tmp_path / "vit.safetensors")
    x = torch.rand(2, 3, 32, 32)
    for num_classes in (0, 10, 1000):
        spec = {"model": "timm:vit_tiny_patch16_224", "kwargs": {"img_size": 32, "depth": 2,
                                                                "num_classes": num_classes}}
        models.check({**spec, "weights": str(tmp_path / "whole.safetensors")})
        model = models.resolve({**spec, "weights": str(tmp_path / "whole.safetensors")})
        assert model.module.num_classes == num_classes
        with torch.no_grad():  # every tensor but the head's is the file's
            assert torch.equal(model.encode_image(x), source.forward_head(source.forward_features(x), pre_logits=True))
        with pytest.raises(ConfigError, match=r"do not load exactly.*blocks\.1\.mlp\.fc2\.weight"):
            models.resolve({**spec, "weights": str(tmp_path / "vit.safetensors")})
    module = models.resolve("python:tests.models:tiny").module
    state = module.state_dict()
    state.pop(next(iter(state)))
    torch.save(state, tmp_path / "tiny.pt")
    with pytest.raises(ConfigError, match="do not load exactly.*Missing key"):
        models.resolve({"model": "python:tests.models:tiny", "weights": str(tmp_path / "tiny.pt")})


# -------------------------------------------------------------------------------------------- their own class


def test_a_vision_model_with_projection_gives_its_projected_embedding(tmp_path):
    torch.manual_seed(0)
    tower = tf.CLIPVisionModelWithProjection(tf.CLIPVisionConfig(**VISION, projection_dim=12)).eval()
    tower.save_pretrained(tmp_path / "proj")
    tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "proj")
    model = models.resolve(f"hf:{tmp_path / 'proj'}")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model.encode_image(x)
        assert out.shape == (2, 12) and torch.equal(out, tower(pixel_values=x).image_embeds)
    tf.CLIPTextModel(tf.CLIPTextConfig(**TINY)).save_pretrained(tmp_path / "text")
    with pytest.raises(ConfigError, match="CLIPTextModel is a text tower alone"):
        models.check(f"hf:{tmp_path / 'text'}")


def test_dinov2_and_distilled_deit_offer_the_features_their_own_heads_read(tmp_path):
    """Dinov2ForImageClassification reads [CLS] ‖ mean patch token; a distilled DeiT averages a head on [CLS] and
    one on the distillation token. With the declared features, each head's logits are a linear map of ours."""
    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32)
    dino = tf.Dinov2ForImageClassification(tf.Dinov2Config(**VISION, num_labels=4)).eval()
    dino.save_pretrained(tmp_path / "dino")
    tf.BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "dino")
    deit = tf.DeiTForImageClassificationWithTeacher(tf.DeiTConfig(**VISION, num_labels=4)).eval()
    deit.save_pretrained(tmp_path / "deit")
    tf.DeiTImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path / "deit")
    with torch.no_grad():
        pooled = models.resolve(f"hf:{tmp_path / 'dino'}").encode_image(x)
        assert pooled.shape == (3, 32)  # the default: its pooler, the LayerNormed [CLS]
        both = models.resolve({"model": f"hf:{tmp_path / 'dino'}", "features": "cls+mean_patch"}).encode_image(x)
        torch.testing.assert_close(dino.classifier(both), dino(pixel_values=x).logits, rtol=0, atol=1e-6)
        f = models.resolve({"model": f"hf:{tmp_path / 'deit'}", "features": "cls+distillation"}).encode_image(x)
        mine = (deit.cls_classifier(f[:, :32]) + deit.distillation_classifier(f[:, 32:])) / 2
        torch.testing.assert_close(mine, deit(pixel_values=x).logits, rtol=0, atol=1e-6)
    with pytest.raises(ConfigError, match="features 'cls' is not one of pooler, cls\\+mean_patch"):
        models.check({"model": f"hf:{tmp_path / 'dino'}", "features": "cls"})
    # the choice is in the default id and in the feature-cache key: a cache filled by one is not read by the other
    data = _data(tmp_path)
    cache = tmp_path / "cache"
    default = harness.tasks.Options("cpu", 8, 0, None, 0, cache)
    for decl, dim in (({"model": f"hf:{tmp_path / 'dino'}", "id": "dino"}, 32),  # one id given to both
                      ({"model": f"hf:{tmp_path / 'dino'}", "id": "dino", "features": "cls+mean_patch"}, 64)):
        model = models.resolve(decl)
        spec = harness.data.parse({**data, "name": data["name"]})
        feats = harness.tasks.features(model, harness.data.load(spec, "train"), None, default)
        assert feats.features.shape[1] == dim, decl
    assert models.parse({"model": "hf:x/y", "features": "cls+mean_patch"}).id == "x/y[cls+mean_patch]"


def test_a_checkpoints_kwargs_and_data_cfg_are_refused_not_ignored(saved):  # noqa: F811
    with pytest.raises(ConfigError, match="kwargs \\['image_size'\\] would be ignored"):
        models.check({"model": f"hf:{saved['vit']}", "kwargs": {"image_size": 64}})
    with pytest.raises(ConfigError, match="data_cfg would be ignored"):
        models.check({"model": f"hf:{saved['vit']}", "data_cfg": {"crop_pct": 1.0}})


# ------------------------------------------------------------------------------------------- image processors


def test_a_processor_the_harness_does_not_replicate_is_refused_by_name(saved, tmp_path):  # noqa: F811
    import shutil

    shutil.copytree(saved["vit"], tmp_path / "convnext")
    (tmp_path / "convnext" / "preprocessor_config.json").unlink()
    tf.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(tmp_path / "convnext")
    with pytest.raises(ConfigError, match="image processor ConvNextImageProcessor is not one the harness replicates"):
        models.check(f"hf:{tmp_path / 'convnext'}")


def _odd_folder(root):
    """An ImageFolder (train and val) of the images a crawl gives: odd sizes, transparent RGBA, grayscale, a
    palette, a palette with a transparent entry, grayscale with alpha."""
    rng = np.random.default_rng(3)
    files = []
    for split in ("train", "val"):
        for name in ("one", "two"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, (h, w) in enumerate([(37, 53), (64, 31), (19, 23), (45, 20), (41, 60), (33, 33)]):
                rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                if i == 0:
                    image = Image.fromarray(rgb)
                elif i == 1:
                    alpha = (rng.integers(0, 2, (h, w)) * 255).astype(np.uint8)
                    image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
                elif i == 2:
                    image = Image.fromarray(rgb[..., 0])
                elif i == 3:
                    image = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
                elif i == 4:
                    image = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
                    image.info["transparency"] = 3
                else:
                    image = Image.fromarray(np.dstack([rgb[..., 1], rgb[..., 2]]), "LA")
                path = folder / f"{i}.png"
                image.save(path, transparency=3) if i == 4 else image.save(path)
                files.append(path)
    return files


@pytest.mark.parametrize("kind", ["clip", "siglip", "vit", "deit", "dinov2"])
def test_the_suites_data_path_gives_the_model_the_processors_pixels(saved, tmp_path, kind):  # noqa: F811
    """Through harness.evaluate's linear probe (the suites' task layer: the image store, DataLoader workers, the
    uint8 geometry then the normalisation on the batch), every image reaches the model as transformers' own
    processor makes it from the file (1e-6: as tests/test_hf.py's pixel test derives it)."""
    files = _odd_folder(tmp_path / "odd")
    assert {Image.open(f).mode for f in files} == {"RGB", "RGBA", "L", "P", "LA"}
    processor = tf.AutoImageProcessor.from_pretrained(saved[kind])
    expected = []
    for f in files:
        image = Image.open(f)
        given = image if processor.do_convert_rgb else image.convert("RGB")  # ViT's: its users convert first
        expected.append(processor(images=given, return_tensors="pt")["pixel_values"][0])
    expected = torch.stack(expected).flatten(1)
    model = models.resolve(f"hf:{saved[kind]}")
    seen = []
    hook = model.image_tower.register_forward_pre_hook(  # what the image tower is handed
        lambda module, args, kwargs: seen.append((args[0] if args else kwargs["pixel_values"]).detach().clone()),
        with_kwargs=True)
    try:
        harness.evaluate(model, [f"imagefolder:{tmp_path / 'odd'}"], tasks=("linear_probe",), workers=2,
                         batch_size=5)
    finally:
        hook.remove()
    got = torch.cat(seen).flatten(1)
    distance = torch.cdist(expected.double(), got.double(), p=float("inf"))  # (files, images fed)
    assert distance.min(dim=1).values.max().item() <= 1e-6, kind  # every file reached the model as processed
    assert distance.min(dim=0).values.max().item() <= 1e-6, kind  # and nothing else did


# ------------------------------------------------------------------------------------------------- hub names


def _snapshot(hub, repo, commit, files: dict, main: bool = True):
    """A repo's snapshot in huggingface_hub's cache layout: models--ORG--NAME/snapshots/COMMIT/FILE, refs/main."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, write in files.items():
        write(snap / name)
    if main:
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / "main").write_text(commit)
    return snap


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub.constants

    path = tmp_path / "hub"
    path.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return path


OPEN_CLIP_CFG = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                                 "head_width": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def test_open_clip_hub_names_load_from_the_cache_and_a_repo_without_weights_is_refused(hub, tmp_path):
    import open_clip

    torch.manual_seed(0)
    built = open_clip.CLIP(**OPEN_CLIP_CFG).eval()
    files = {"open_clip_config.json": lambda p: p.write_text(json.dumps(
                 {"model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}})),
             "open_clip_model.safetensors": lambda p: save_file(built.state_dict(), p)}
    _snapshot(hub, "org/tiny-clip", "1" * 40, files)
    model = models.resolve("open_clip:hf-hub:org/tiny-clip")
    assert model.spec.name == "hf-hub:org/tiny-clip" and model.clip_like
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.encode_image(x), built.encode_image(x))
        tokens = model.tokenizer(["a photo of a cat."])
        assert torch.equal(model.encode_text(tokens), built.encode_text(open_clip.tokenize(["a photo of a cat."])))
    _snapshot(hub, "org/no-weights", "2" * 40, {"open_clip_config.json": files["open_clip_config.json"]})
    with pytest.raises(ConfigError, match="neither open_clip_model.safetensors nor .* random weights"):
        models.check("open_clip:hf-hub:org/no-weights")
    with pytest.raises(ConfigError, match="an open_clip checkpoint .* open_clip:hf-hub:org/tiny-clip"):
        models.check("hf:org/tiny-clip")
    with pytest.raises(ConfigError, match="open_clip loads no revision"):
        models.check({"model": "open_clip:hf-hub:org/tiny-clip", "revision": "v1"})


def test_timm_hub_names_load_from_the_cache_and_hf_names_the_timm_registry(hub):
    import timm

    torch.manual_seed(0)
    built = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=1, num_classes=3).eval()
    cfg = {"architecture": "vit_tiny_patch16_224", "num_classes": 3,
           "model_args": {"img_size": 32, "depth": 1},
           "pretrained_cfg": {"input_size": [3, 32, 32], "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3,
                              "num_classes": 3, "classifier": "head"}}
    _snapshot(hub, "org/tiny-vit", "3" * 40, {"config.json": lambda p: p.write_text(json.dumps(cfg)),
                                              "model.safetensors": lambda p: save_file(built.state_dict(), p)})
    models.check("timm:hf-hub:org/tiny-vit")  # what the suites call first
    model = models.resolve("timm:hf-hub:org/tiny-vit")  # its repo's weights, not random ones
    assert model.spec.weights == "pretrained"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.encode_image(x), built.forward_head(built.forward_features(x), pre_logits=True))
    for bad, why in ((("revision", "v1"),), "name a revision in the name"), ((("weights", "random"),), "carries"):
        with pytest.raises(ConfigError, match=why):
            models.check({"model": "timm:hf-hub:org/tiny-vit", **dict(bad)})
    with pytest.raises(ConfigError, match="not in the Hugging Face cache at revision 'v9'"):
        models.check("timm:hf-hub:org/tiny-vit@v9")
    with pytest.raises(ConfigError, match="a timm checkpoint .* timm:hf-hub:org/tiny-vit"):
        models.check("hf:org/tiny-vit")


def test_an_hf_revision_is_pinned_and_remote_code_is_refused(hub, saved):  # noqa: F811
    """Two snapshots of one repo, main at the second: ID@REVISION (or "revision") loads the first."""
    torch.manual_seed(0)
    snapshots = []
    for commit in ("a" * 40, "b" * 40):
        vit = tf.ViTModel(tf.ViTConfig(**VISION), add_pooling_layer=False)
        folder = _snapshot(hub, "org/vit", commit, {}, main=commit == "b" * 40)
        vit.save_pretrained(folder)
        tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
        snapshots.append(vit.eval())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        first = [models.resolve("hf:org/vit@" + "a" * 40), models.resolve({"model": "hf:org/vit",
                                                                            "revision": "a" * 40})]
        for model in first:
            assert torch.equal(model.encode_image(x), snapshots[0](pixel_values=x).last_hidden_state[:, 0])
        assert torch.equal(models.resolve("hf:org/vit").encode_image(x),
                           snapshots[1](pixel_values=x).last_hidden_state[:, 0])
    with pytest.raises(ConfigError, match="revision 'c+'"):
        models.check("hf:org/vit@" + "c" * 40)
    # the declared revision is part of the default id (two revisions stay two rows), and a folder has none
    assert models.parse({"model": "hf:org/vit", "revision": "a" * 40}).id == "org/vit@" + "a" * 40
    with pytest.raises(ConfigError, match="a local folder, which has no revisions"):
        models.check({"model": f"hf:{saved['vit']}", "revision": "a" * 40})
    # a unit that read hf:org/vit is computed again when main moves to another commit (its snapshot is unchanged)
    from harness.infra import inputs

    with inputs.recording() as read:
        models.resolve("hf:org/vit")
    assert not inputs.changed(read)
    (hub / "models--org--vit" / "refs" / "main").write_text("a" * 40)
    assert inputs.changed(read)
    remote = dict(json.loads((saved["vit"] / "config.json").read_text()), auto_map={"AutoModel": "mine.MyModel"})
    _snapshot(hub, "org/remote", "d" * 40, {"config.json": lambda p: p.write_text(json.dumps(remote))})
    with pytest.raises(ConfigError, match="needs trust_remote_code"):
        models.check("hf:org/remote")


def test_the_command_line_is_offline_unless_the_user_says_otherwise(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(REPO_ROOT))
    code = ("import os, runpy, sys; sys.argv = ['harness', '--help'];\n"
            "try: runpy.run_module('harness', run_name='__main__')\n"
            "except SystemExit: print(os.environ['HF_HUB_OFFLINE'], os.environ['HF_DATASETS_OFFLINE'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.stdout.split()[-2:] == ["1", "1"], out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-c", code], env={**env, "HF_HUB_OFFLINE": "0"}, capture_output=True,
                         text=True, timeout=300)
    assert out.stdout.split()[-2:] == ["0", "1"], out.stderr[-2000:]


# ------------------------------------------------------------------------------- SigLIP 2 text, logit scale


def test_a_siglip2_gemma_tokenizer_gets_open_clips_canonicalised_text(saved, tmp_path):  # noqa: F811
    """A fixed-resolution SigLIP 2 checkpoint is model type siglip with a Gemma tokenizer, which neither lower-cases
    nor strips punctuation; open_clip's SigLIP 2 configs canonicalise (tokenizer_kwargs clean: canonicalize)."""
    import shutil

    from open_clip.tokenizer import HFTokenizer

    folder = tmp_path / "siglip2"
    shutil.copytree(saved["siglip"], folder)
    for name in os.listdir(folder):
        if "token" in name or name.endswith(".model") or name == "special_tokens_map.json":
            (folder / name).unlink()
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "▁", *string.ascii_letters,
                                         *string.punctuation])}
    tf.GemmaTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    model = models.resolve(f"hf:{folder}")
    texts = ["A Photo, of a CAT!", "two_dogs on a beach."]
    ours = model.tokenizer(texts)
    theirs = HFTokenizer(str(folder), context_length=64, clean="canonicalize")(texts)
    assert ours.shape == (2, 64)
    assert torch.equal(ours[:, :10], theirs[:, :10]), (ours[:, :10], theirs[:, :10])
    assert torch.equal(ours[0], model.tokenizer(["a photo of a cat"])[0])


def test_the_reference_reads_a_logit_scale_above_ln_100_as_the_libraries_do(saved):  # noqa: F811
    """OpenAI's, open_clip's and transformers' forwards read exp(s) unclamped; training clamps s (open_clip's
    train.py). A checkpoint with s = ln 200 scores its pairs at 200 in the reference too."""
    clip = tf.CLIPModel.from_pretrained(saved["clip"]).eval()
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(200.0))
    ref = harness.from_hf(clip)
    x, tokens = torch.rand(2, 3, 32, 32), clip_tokenizer()(["a cat", "a dog"], padding="max_length",
                                                              max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        theirs = clip(pixel_values=x, input_ids=tokens).logits_per_image
        ours, _ = ref(x, tokens)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert abs(ref.scale().item() - 200.0) < 1e-3
