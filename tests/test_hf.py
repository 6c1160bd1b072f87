"""Hugging Face transformers models: the hf: registry entry, the converters into the reference, SigLIP's loss.

Everything is real transformers code on tiny random models written with save_pretrained; the tokenizers are made
here: CLIP's BPE from the vocabulary open_clip ships (the same merges and ids as OpenAI's), and for SigLIP a
SentencePiece model trained with the sentencepiece package on a small corpus. No hub, no mocks.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf  # the hf extra, installed by nox -s tests: not skipped when missing
from PIL import Image

from harness import from_hf, models, siglip_loss
from harness.convert import ConversionError, UnsupportedModelError
from harness.convert.common import materialize
from harness.infra.results import REPO_ROOT
from harness.infra.suite import ConfigError
from harness.methods.numerics import sweep, verdict
from harness.models.hf import ProcessorTransform

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
CAPTIONS = ["a photo of a cat.", "A Chinese temple, at night!", "two dogs on a beach", "x"]


def clip_tokenizer() -> tf.CLIPTokenizer:
    """CLIP's BPE tokenizer built from open_clip's bundled vocabulary, as OpenAI's SimpleTokenizer builds it:
    the 256 byte symbols, the same with '</w>', the 48,894 merges, then <|startoftext|> and <|endoftext|>."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1: 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return tf.CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges, model_max_length=77)


def siglip_tokenizer(folder) -> tf.SiglipTokenizer:
    """A SentencePiece model trained here on a small corpus (SigLIP's tokenizer is a SentencePiece model)."""
    import sentencepiece as spm

    corpus = folder / "corpus.txt"
    words = ["a photo of a", "cat", "dog", "chinese temple at night", "two dogs on a beach", "bird", "car",
             "picture", "drawing", "the", "an", "of", "small", "large", "red", "blue", "green"]
    rng = np.random.default_rng(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(400)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "spm"), vocab_size=40,
                                   hard_vocab_limit=False, eos_id=1, unk_id=2, pad_id=0, bos_id=-1, minloglevel=2)
    return tf.SiglipTokenizer(vocab_file=str(folder / "spm.model"), model_max_length=64)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Folders save_pretrained wrote: a CLIP (QuickGELU, OpenAI's choice), a SigLIP, a ViT, a DeiT and a Dinov2."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    out = {}
    clip = tf.CLIPModel(tf.CLIPConfig(text_config=dict(TINY), vision_config=dict(TINY, image_size=32, patch_size=8),
                                      projection_dim=16))
    out["clip"] = root / "clip"
    clip.save_pretrained(out["clip"])
    tf.CLIPProcessor(tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                     clip_tokenizer()).save_pretrained(out["clip"])
    (root / "sp").mkdir()
    tok = siglip_tokenizer(root / "sp")
    siglip = tf.SiglipModel(tf.SiglipConfig(text_config=dict(TINY, vocab_size=tok.vocab_size,
                                                             max_position_embeddings=64),
                                            vision_config=dict(TINY, image_size=32, patch_size=8)))
    out["siglip"] = root / "siglip"
    siglip.save_pretrained(out["siglip"])
    tf.SiglipProcessor(tf.SiglipImageProcessor(size={"height": 32, "width": 32}), tok).save_pretrained(out["siglip"])
    vit = tf.ViTModel(tf.ViTConfig(**TINY, image_size=32, patch_size=8), add_pooling_layer=False)
    out["vit"] = root / "vit"
    vit.save_pretrained(out["vit"])
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out["vit"])
    deit = tf.DeiTModel(tf.DeiTConfig(**TINY, image_size=32, patch_size=8), add_pooling_layer=False)
    out["deit"] = root / "deit"
    deit.save_pretrained(out["deit"])
    tf.DeiTImageProcessor(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(
        out["deit"])
    dino = tf.Dinov2Model(tf.Dinov2Config(**TINY, image_size=32, patch_size=8))
    out["dinov2"] = root / "dinov2"
    dino.save_pretrained(out["dinov2"])
    tf.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}).save_pretrained(
        out["dinov2"])
    return out


def odd_images() -> list[Image.Image]:
    """Non-square sizes, both orientations, one smaller than the crop, a transparent RGBA and a grayscale one."""
    rng = np.random.default_rng(1)
    rgb = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
           [(37, 53), (64, 31), (19, 23), (101, 77)]]
    rgba = rng.integers(0, 256, (45, 20, 4), dtype=np.uint8)
    rgba[..., 3] = rng.integers(0, 2, (45, 20)) * 255
    return rgb + [Image.fromarray(rgba, "RGBA"), Image.fromarray(rng.integers(0, 256, (41, 60), dtype=np.uint8))]


# ------------------------------------------------------------------------------------------ preprocessing


@pytest.mark.parametrize("kind", ["clip", "siglip", "vit", "deit", "dinov2"])
def test_pixel_values_equal_the_checkpoints_own_processor(saved, kind):
    """The harness's transform for an hf: model gives transformers' own processor's pixel values. Tolerance 1e-6:
    the same float32 operations in the same order give the same bits; 1e-6 is a few float32 ulps of values up to
    ~3 (|x − mean| / std with std ≥ 0.26), room for a BLAS-free reordering, far below one grey level (1/255/0.26
    ≈ 0.015)."""
    model = models.resolve(f"hf:{saved[kind]}")
    processor = tf.AutoImageProcessor.from_pretrained(saved[kind])
    for image in odd_images():
        ours = model.transform(image)
        # ViT's processor has no do_convert_rgb and fails on other modes: its users convert first
        given = image if processor.do_convert_rgb else image.convert("RGB")
        theirs = processor(images=given, return_tensors="pt")["pixel_values"][0]
        assert ours.shape == theirs.shape == (3, 32, 32), (image.size, ours.shape, theirs.shape)
        assert (ours - theirs).abs().max().item() <= 1e-6, (kind, image.size, image.mode)


def test_siglip_squashes_and_clip_crops_and_swapping_them_is_caught(saved):
    """SigLIP resizes a non-square image straight to its square (a squash); CLIP resizes the short side and
    crops. A transform with the other's resize rule differs from the processor by far more than the tolerance."""
    image = odd_images()[0]  # 53 × 37
    for kind, other in (("siglip", {"size": {"shortest_edge": 32}, "do_center_crop": True,
                                    "crop_size": {"height": 32, "width": 32}}),
                        ("clip", {"size": {"height": 32, "width": 32}, "do_center_crop": False})):
        processor = tf.AutoImageProcessor.from_pretrained(saved[kind])
        theirs = processor(images=image, return_tensors="pt")["pixel_values"][0]
        swapped = ProcessorTransform(type(processor)(**{**processor.to_dict(), **other}))
        assert (swapped(image) - theirs).abs().max().item() > 0.1, kind


# ----------------------------------------------------------------------------------------------- tokenizers


def test_clip_tokenizer_built_from_open_clips_vocabulary_gives_open_clips_ids():
    """The BPE tokenizer these tests save is OpenAI's: the same ids as open_clip's tokenizer up to the end-of-text
    token (after it, transformers pads with <|endoftext|>, open_clip with 0)."""
    import open_clip

    ours = clip_tokenizer()(CAPTIONS, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    theirs = open_clip.get_tokenizer("ViT-B-32")(CAPTIONS)
    for a, b in zip(ours, theirs):
        n = int((b != 0).sum())
        assert a[:n].tolist() == b[:n].tolist() and a[n - 1] == 49407


def test_siglip_pads_to_max_length_and_dynamic_padding_gives_other_embeddings(saved):
    """SigLIP's text tower is bidirectional and reads the last position: trained on texts padded to 64 tokens, it
    gives other embeddings with dynamic padding (mteb's zero-shot accuracy fell from 80% to 10%, PR #1424). The
    harness's tokens are the processor's with padding="max_length", and their embeddings the model's own."""
    model = models.resolve(f"hf:{saved['siglip']}")
    processor = tf.AutoProcessor.from_pretrained(saved["siglip"])
    tokens = model.tokenizer(CAPTIONS)
    padded = processor(text=CAPTIONS, padding="max_length", max_length=64, return_tensors="pt")["input_ids"]
    assert tokens.shape == (len(CAPTIONS), 64) and torch.equal(tokens, padded)
    with torch.no_grad():
        ours = model.encode_text(tokens)
        fixed = model.module.hf.get_text_features(input_ids=padded).pooler_output
        dynamic = processor(text=CAPTIONS, padding=True, return_tensors="pt")
        short = model.module.hf.get_text_features(**dynamic).pooler_output
    assert torch.allclose(ours, fixed, rtol=0, atol=1e-6)
    assert (short - fixed).abs().max().item() > 1e-2  # the pitfall, planted: dynamic padding moves the embeddings
    # SigLIP's tokenizer canonicalises as its processor does: lower case, punctuation stripped
    assert torch.equal(model.tokenizer(["A Cat!"]), model.tokenizer(["a cat"]))


def test_clip_tokens_and_embeddings_equal_the_processor_and_model(saved):
    model = models.resolve(f"hf:{saved['clip']}")
    processor = tf.AutoProcessor.from_pretrained(saved["clip"])
    assert model.clip_like and model.library == "hf"
    images = odd_images()
    with torch.no_grad():
        ours_img = model.encode_image(torch.stack([model.transform(i) for i in images]))
        theirs_img = model.module.hf.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
        ours_txt = model.encode_text(model.tokenizer(CAPTIONS))
        inputs = processor(text=CAPTIONS, padding=True, return_tensors="pt")  # CLIP's docs: dynamic padding + mask
        theirs_txt = model.module.hf.get_text_features(**inputs).pooler_output
    assert (ours_img - theirs_img).abs().max().item() <= 1e-5
    # CLIP's causal text tower reads the end-of-text token, which padding after it cannot reach: equal either way
    assert (ours_txt - theirs_txt).abs().max().item() <= 1e-5


# ----------------------------------------------------------------------------------------------- converters


@pytest.mark.parametrize("kind", ["clip", "vit"])
def test_converted_reference_agrees_in_float64(saved, kind):
    model = models.resolve(f"hf:{saved[kind]}")
    ref = models.reference(model)
    assert ref.library == "reference" and ref.weights == model.weights
    x = torch.stack([model.transform(i) for i in odd_images()]).double()  # RGBA and grayscale made RGB
    model.module.double()
    ref.module.double()
    with torch.no_grad():
        pairs = [(ref.encode_image(x), model.encode_image(x))]
        if kind == "clip":
            tokens = model.tokenizer(CAPTIONS)
            pairs.append((ref.encode_text(tokens), model.encode_text(tokens)))
    for a, b in pairs:
        assert ((a - b).norm() / b.norm()).item() <= 1e-12


def test_a_quick_gelu_clip_converted_as_gelu_fails_its_agreement_row(saved):
    """OpenAI's CLIPs use QuickGELU (open_clip #771: run with GELU they give wrong numbers silently). The tiny CLIP
    is QuickGELU as transformers' CLIPConfig defaults; converted as GELU, every output row of the sweep fails in
    float64 and float32, and the first failing stage is the first block."""
    model = tf.CLIPModel.from_pretrained(saved["clip"]).eval()
    assert model.config.vision_config.hidden_act == "quick_gelu"
    images = torch.randn(4, 3, 32, 32)
    tokens = models.resolve(f"hf:{saved['clip']}").tokenizer(CAPTIONS)

    def run(m, dt):
        from harness.evals.agreement_hf import _clip_outputs, _stages
        from harness.methods.numerics import capture

        with torch.no_grad():
            return capture(_stages(m), lambda: _clip_outputs(m, images.to(dt), tokens))

    def as_gelu(m, copy=True):
        right = from_hf(m, copy=copy)
        cfg = right.config
        from dataclasses import replace

        wrong = replace(cfg, vision=replace(cfg.vision, act="gelu"), text=replace(cfg.text, act="gelu"))
        return materialize(type(right), wrong, right.state_dict(), copy=False)

    outputs = ["image_embedding", "text_embedding", "logits"]
    good = pd.DataFrame(sweep(model, from_hf, run, outputs, ["float64", "float32"], torch.device("cpu"), "hf"))
    bad = pd.DataFrame(sweep(model, as_gelu, run, outputs, ["float64", "float32"], torch.device("cpu"), "hf"))
    assert good["passed"].all()
    out = bad[bad["check"].isin(outputs)]
    assert not out["passed"].any() and (out["first_failing_stage"] == "visual.blocks.0").all()


def test_what_the_reference_lacks_is_refused_by_name(saved):
    with pytest.raises(UnsupportedModelError, match="attention-pool"):
        from_hf(tf.SiglipModel.from_pretrained(saved["siglip"]))
    with pytest.raises(UnsupportedModelError, match="LayerScale"):
        from_hf(tf.Dinov2Model.from_pretrained(saved["dinov2"]))
    with pytest.raises(UnsupportedModelError, match="tanh pooler"):
        from_hf(tf.ViTModel(tf.ViTConfig(**TINY, image_size=32, patch_size=8)))
    with pytest.raises(UnsupportedModelError, match="activation 'gelu_new'"):
        from_hf(tf.ViTModel(tf.ViTConfig(**TINY, image_size=32, patch_size=8, hidden_act="gelu_new"),
                            add_pooling_layer=False))
    # strict: a tensor the mapping does not use is an error naming it
    from harness.convert.hf import config_from_hf, convert_state_dict

    vit = tf.ViTModel.from_pretrained(saved["vit"], add_pooling_layer=False)
    sd = {**vit.state_dict(), "layers.0.attention.extra.weight": torch.zeros(1)}
    with pytest.raises(ConversionError, match="unexpected keys: layers.0.attention.extra.weight"):
        convert_state_dict(sd, config_from_hf(vit))
    assert models.has_reference(f"hf:{saved['clip']}") and not models.has_reference(f"hf:{saved['siglip']}")


def test_unknown_and_unsupported_model_classes_are_refused_before_any_work(tmp_path):
    tf.BertConfig(**TINY).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="class unknown \\(model type 'bert'\\) is not supported"):
        models.check(f"hf:{tmp_path / 'bert'}")
    tf.Siglip2Config().save_pretrained(tmp_path / "siglip2")
    with pytest.raises(ConfigError, match="'siglip2' is not supported: Siglip2Model's NaFlex"):
        models.check(f"hf:{tmp_path / 'siglip2'}")
    with pytest.raises(ConfigError, match="no transformers config.json found"):
        models.check(f"hf:{tmp_path / 'nothing'}")
    with pytest.raises(ConfigError, match="names a model class"):
        models.check({"model": "hf:CLIPModel", "weights": "pretrained"})
    models.check("hf:ViTModel")  # a class name: random weights of its default config
    assert models.parse("hf:ViTModel").weights == "random"
    assert models.parse(f"hf:{tmp_path}").weights == "pretrained"


def test_image_backbones_give_their_documented_features(saved):
    """ViTModel and DeiTModel: the [CLS] token after the final LayerNorm (what their classification heads read);
    Dinov2Model: its pooler output (the same token)."""
    x = torch.randn(2, 3, 32, 32)
    for kind in ("vit", "deit", "dinov2"):
        model = models.resolve(f"hf:{saved[kind]}")
        assert not model.clip_like and model.input_size == (3, 32, 32)
        with torch.no_grad():
            out = model.module.hf(pixel_values=x)
            assert torch.equal(model.encode_image(x), out.last_hidden_state[:, 0])


# ------------------------------------------------------------------------------------------------ SigLIP loss


def test_siglip_loss_equals_open_clips_and_a_planted_error_fails_its_row():
    from open_clip.loss import SigLipLoss

    from harness.evals.agreement_clip import loss_rows, open_clip_siglip_terms

    g = torch.Generator().manual_seed(0)
    x, y = (torch.nn.functional.normalize(torch.randn(6, 16, generator=g, dtype=torch.float64), dim=-1)
            for _ in range(2))
    s, b = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-10.0, dtype=torch.float64)
    assert abs(siglip_loss(x, y, s, b).item() - SigLipLoss()(x, y, s, b).item()) <= 1e-12
    assert torch.allclose(siglip_loss(x, y, s, b, reduction="none"), open_clip_siglip_terms(x, y, s, b), atol=0)
    cfg = {"batch_sizes": [2, 8], "logit_scales": [10.0], "logit_biases": [-10.0], "dim": 16, "min_terms": 64}
    rows = pd.DataFrame(loss_rows(cfg, ["float64", "float32", "bfloat16"], "cpu", 0))
    sig = rows[rows["check"] == "siglip_loss"]
    assert len(sig) == 6 and sig["passed"].all() and (sig["batch"] ** 2 * sig["batches"] >= 64).all()
    # planted: the bias left out of the reference's logits (a 10-logit shift) fails every dtype's row
    wrong = siglip_loss(x, y, s, 0.0, reduction="none")
    assert not verdict("float64", wrong, open_clip_siglip_terms(x, y, s, b))["passed"]


# ---------------------------------------------------------------------------------------- through the suites


@pytest.mark.slow
def test_zero_shot_and_linear_probe_run_saved_hf_models(saved, tmp_path):
    """--set 'models=["hf:DIR"]' from the command line: zero_shot for the CLIP and the SigLIP, linear_probe for
    the ViT and the CLIP's and SigLIP's image towers, on an ImageFolder written here (tests/test_your_model.py's)."""
    from tests.test_your_model import write_my_data

    root = write_my_data(tmp_path / "my_data")
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(REPO_ROOT)}
    dataset = {"name": f"imagefolder:{root}", "classnames": str(root / "names.txt"),
               "templates": str(root / "templates.json")}
    for suite, names in (("zero_shot", ["clip", "siglip"]), ("linear_probe", ["vit", "clip", "siglip"])):
        cmd = [sys.executable, "-m", "harness", "run", suite, "--out", str(tmp_path / "out"),
               "--set", "models=" + json.dumps([f"hf:{saved[n]}" for n in names]),
               "--set", "datasets=" + json.dumps([dataset])]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        table = pd.read_csv(tmp_path / "out" / f"{suite}.csv")
        table = table[table["dataset"] != "mean"]
        assert list(table["library"]) == ["hf"] * len(names) and (table["dataset"] == f"imagefolder:{root}").all()
        assert sorted(table["model"]) == sorted(str(saved[n]) for n in names)


# ------------------------------------------------------------------------------------------- compare --library


def reference_twin(library):
    """compare's candidate factory: the reference model of the library's (a harness.models.hf wrapper's) config,
    random weights (compare carries the library's in)."""
    from harness.convert.hf import config_from_hf
    from harness.reference import CLIP, ViT

    config = config_from_hf(library.hf)
    return (CLIP if hasattr(config, "text") else ViT)(config)


def gelu_twin(library):
    """The same with GELU where the library has QuickGELU: the pitfall of open_clip #771, as a candidate."""
    from dataclasses import replace

    from harness.convert.hf import config_from_hf
    from harness.reference import CLIP

    c = config_from_hf(library.hf)
    return CLIP(replace(c, vision=replace(c.vision, act="gelu"), text=replace(c.text, act="gelu")))


def test_compare_library_hf_carries_q_k_v_into_a_fused_qkv(saved, tmp_path, capsys):
    """compare --library hf:DIR: the mapping proposal concatenates transformers' separate q, k and v projections
    into the candidate's fused qkv, every stage is judged, and a planted GELU-for-QuickGELU candidate is found at
    the first block."""
    from harness.tools import compare

    for kind in ("vit", "clip"):
        code = compare.main(["--candidate", "python:tests.test_hf:reference_twin", "--library",
                             f"hf:{saved[kind]}", "--out", str(tmp_path / kind)])
        out = capsys.readouterr().out
        assert code == 0, out[-2000:]
        assert "q_proj.weight + " in out and "(name (q, k, v concatenated))" in out
        df = pd.read_csv(tmp_path / kind / "compare.csv")
        judged = df[df["result"] != "not judged"]
        assert (judged["result"] == "pass").all() and len(judged) >= 40
    code = compare.main(["--candidate", "python:tests.test_hf:gelu_twin", "--library", f"hf:{saved['clip']}"])
    out = capsys.readouterr().out
    assert code == 1 and "First divergence: library stage `hf.vision_model.encoder.layers.0" in out
