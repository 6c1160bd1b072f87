"""Reference CLIP against real open_clip (and timm) models: small configurations, random weights."""

import math

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

import harness
from harness.convert import UnsupportedModelError
from harness.models.open_clip import create as load_open_clip


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(torch.finfo(b.dtype).tiny)).item()  # a batch of one pair has loss 0


def small_open_clip(name: str, quick_gelu: bool = False, layers: int = 1, **vision):
    """The real open_clip architecture named `name`, with `layers` blocks per tower (so tests stay fast)."""
    cfg = open_clip.get_model_config(name)
    vision_cfg = {**cfg["vision_cfg"], "layers": layers, **vision}
    text_cfg = {**cfg["text_cfg"], "layers": layers}
    torch.manual_seed(0)
    return open_clip.CLIP(cfg["embed_dim"], vision_cfg, text_cfg, quick_gelu=quick_gelu).eval()


def check(model, tokens):
    size = model.visual.image_size[0]
    for dtype, tol in [(torch.float64, 1e-12), (torch.float32, 1e-5)]:
        lib = model.to(dtype)
        ref = harness.from_open_clip(lib)
        assert next(ref.parameters()).dtype == dtype and not ref.training
        x = torch.randn(2, 3, size, size, dtype=dtype)
        with torch.no_grad():
            assert rel(ref.encode_image(x), lib.encode_image(x)) < tol
            assert rel(ref.encode_text(tokens), lib.encode_text(tokens)) < tol
            assert rel(ref(x, tokens)[0], lib.get_logits(x, tokens)[0]) < tol


@pytest.fixture(scope="module")
def tokens():
    return open_clip.get_tokenizer("ViT-B-32")(["a photo of a cat.", "a diagram of a rocket."])


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-S-16", "ViT-S-32", "ViT-M-16", "ViT-M-32",
                                  "ViT-B-16-plus"])
@pytest.mark.parametrize("quick_gelu", [False, True])
def test_from_open_clip_agrees(name, quick_gelu, tokens):
    check(small_open_clip(name, quick_gelu), tokens)


def test_bundled_tokenizer_is_offline(tokens):
    assert tokens.shape == (2, 77)
    assert tokens[0].argmax() == (tokens[0] != 0).sum() - 1  # the end-of-text token has the highest id


def test_pretrained_code_path_with_a_local_checkpoint(tmp_path, tokens):
    """open_clip's pretrained=<path>, as a user with downloaded weights would call it."""
    source = load_open_clip("ViT-S-32", "random", seed=1)
    path = tmp_path / "vit_s_32.pt"
    torch.save(source.state_dict(), path)
    loaded = load_open_clip("ViT-S-32", str(path))
    assert torch.equal(loaded.visual.proj, source.visual.proj)
    check(loaded, tokens)


def test_unknown_pretrained_tag_says_how_to_fix():
    with pytest.raises(RuntimeError, match="Hugging Face cache|local checkpoint"):
        load_open_clip("ViT-S-32", "no_such_tag")


@pytest.mark.parametrize("vision,feature", [
    (dict(layers=[1, 1, 1, 1], width=16, image_size=64), "ResNet"),
    (dict(ls_init_value=1e-4), "LayerScale"),
    (dict(attentional_pool=True), "attentional pooling"),
    (dict(final_ln_after_pool=True), "final_ln_after_pool"),
])
def test_unsupported_towers_are_named(vision, feature):
    cfg = open_clip.get_model_config("ViT-S-32")
    model = open_clip.CLIP(cfg["embed_dim"], {**cfg["vision_cfg"], "layers": 1, **vision},
                           {**cfg["text_cfg"], "layers": 1})
    with pytest.raises(UnsupportedModelError, match=feature):
        harness.from_open_clip(model)


def test_timm_clip_tower_three_way(tokens):
    """open_clip's image tower -> timm (timm's own checkpoint filter) -> reference: all three agree."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    oc = small_open_clip("ViT-B-32", layers=2).double()
    tm = timm.create_model("vit_base_patch32_clip_224", depth=2, num_classes=512).eval().double()
    tm.load_state_dict(checkpoint_filter_fn(oc.state_dict(), tm))
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        a, b = oc.encode_image(x), tm(x)
        c, d = harness.from_timm(tm)(x), harness.from_open_clip(oc).encode_image(x)
    assert rel(b, a) < 1e-12 and rel(c, a) < 1e-12 and rel(d, b) < 1e-12


@pytest.mark.parametrize("n", [1, 2, 3, 16, 128, 512])
@pytest.mark.parametrize("scale", [1.0, 14.285, 100.0])
def test_clip_loss_matches_open_clip(n, scale):
    img, txt = (F.normalize(torch.randn(n, 64, dtype=torch.float64), dim=-1) for _ in range(2))
    s = torch.tensor(scale, dtype=torch.float64)
    assert rel(harness.clip_loss(img, txt, s), ClipLoss()(img, txt, s)) < 1e-12
    img, txt, s = img.float(), txt.float(), s.float()
    assert rel(harness.clip_loss(img, txt, s), ClipLoss()(img, txt, s)) < 1e-6


def test_clip_loss_properties():
    x = F.normalize(torch.randn(8, 32), dim=-1)
    assert harness.clip_loss(x, x, 100.0) < 1e-3  # perfectly matched pairs at high scale: near zero
    assert abs(harness.clip_loss(x, x, 0.0) - math.log(8)) < 1e-6  # scale 0: uniform softmax, log N
    with pytest.raises(ValueError, match="matching pairs"):
        harness.clip_loss(x, x[:4], 1.0)


def test_logit_scale_is_read_as_it_is_clamped_at_100_by_training_and_forward_returns_a_pair():
    cfg = harness.CLIPConfig(
        embed_dim=32,
        vision=harness.reference.clip_vision_config(image_size=32, patch_size=8, width=64, depth=1, mlp_dim=128,
                                                    heads=4, num_classes=32),
        text=harness.CLIPTextConfig(context_length=16, vocab_size=100, width=64, depth=1, heads=4, mlp_dim=128))
    model = harness.CLIP(cfg)
    assert abs(model.scale().item() - 1 / 0.07) < 1e-4
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert abs(model.scale().item() - math.exp(10.0)) < 1e-2  # the forward reads it as it is
    model.clamp_logit_scale_()  # what a training step ends with
    assert abs(model.scale().item() - 100.0) < 1e-4
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.clamp_logit_scale_()
    assert model.scale().item() == 1.0
    tokens = torch.randint(1, 99, (3, 16))
    per_image, per_text = model(torch.randn(2, 3, 32, 32), tokens)
    assert per_image.shape == (2, 3) and torch.equal(per_text, per_image.T)
    with pytest.raises(ValueError, match="context length"):
        model.encode_text(torch.randint(1, 99, (1, 17)))
