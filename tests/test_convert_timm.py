"""The timm -> reference converter against real timm models (small configurations, random weights)."""

import pytest
import timm
import torch

import harness
from harness.convert import ConversionError, UnsupportedModelError, convert_state_dict
from harness.models.timm import create as load_timm

SMALL = dict(img_size=32, depth=2)  # real timm architectures, shrunk so that the tests stay fast


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def check_agreement(model, image_size):
    for dtype, tol in [(torch.float64, 1e-12), (torch.float32, 1e-5)]:
        lib = model.to(dtype)
        ref = harness.from_timm(lib)
        assert next(ref.parameters()).dtype == dtype and not ref.training
        x = torch.randn(2, 3, image_size, image_size, dtype=dtype)
        with torch.no_grad():
            assert rel(ref(x), lib(x)) < tol
            assert rel(ref.forward_head(ref.forward_features(x), pre_logits=True),
                       lib.forward_head(lib.forward_features(x), pre_logits=True)) < tol


@pytest.mark.parametrize("name", [
    "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
    pytest.param("vit_large_patch16_224", marks=pytest.mark.slow),
    "vit_base_patch32_224", "deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224",
    "vit_base_patch16_gap_224",
    # ViT-family models the agreement suite does not list
    "vit_small_patch32_224", "vit_base_patch16_clip_224", "vit_base_patch32_clip_quickgelu_224",
    "vit_medium_patch16_clip_224", "vit_base_patch16_224_miil",
])
def test_from_timm_agrees(name):
    size = 64 if "patch32" in name else 32
    model = timm.create_model(name, **{**SMALL, "img_size": size}).eval()
    check_agreement(model, size)


@pytest.mark.slow
def test_from_timm_384_model():
    model = timm.create_model("vit_base_patch16_384", depth=1).eval()
    check_agreement(model, 384)


def test_features_only_model_without_head():
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, **SMALL).eval()
    ref = harness.from_timm(model)
    assert isinstance(ref.head, torch.nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    assert rel(ref(x), model(x)) < 1e-5


@pytest.mark.parametrize("kwargs,feature", [
    (dict(reg_tokens=4), "register tokens"),
    (dict(init_values=1e-5), "LayerScale"),
    (dict(qk_norm=True), "QK normalisation"),
    (dict(no_embed_class=True), "no_embed_class"),
    (dict(global_pool="map"), "global_pool='map'"),
    (dict(dynamic_img_size=True), "dynamic image size"),
])
def test_unsupported_features_are_named(kwargs, feature):
    model = timm.create_model("vit_tiny_patch16_224", **SMALL, **kwargs)
    with pytest.raises(UnsupportedModelError, match=feature):
        harness.from_timm(model)


def test_other_architectures_are_refused_by_name():
    with pytest.raises(UnsupportedModelError, match="Eva.*RoPE"):
        harness.from_timm(timm.create_model("eva02_tiny_patch14_224", img_size=28, depth=1))
    with pytest.raises(UnsupportedModelError, match="SwiGLU.*RmsNorm|RmsNorm.*SwiGLU"):
        harness.from_timm(timm.create_model("vit_tiny_patch16_224", mlp_layer=timm.layers.SwiGLU,
                                            norm_layer="rmsnorm", **SMALL))


def test_missing_extra_and_misshapen_keys_are_named():
    model = timm.create_model("vit_tiny_patch16_224", **SMALL)
    config = harness.convert.config_from_timm(model)
    sd = dict(model.state_dict())
    sd["blocks.0.attn.extra.weight"] = torch.zeros(1)
    del sd["blocks.1.mlp.fc2.bias"]
    sd["pos_embed"] = torch.zeros(1, 3, 192)
    with pytest.raises(ConversionError) as err:
        convert_state_dict(sd, config)
    msg = str(err.value)
    assert "blocks.1.mlp.fc2.bias" in msg and "blocks.0.attn.extra.weight" in msg and "pos_embed" in msg


def test_every_source_tensor_is_used_once():
    model = timm.create_model("vit_tiny_patch16_224", **SMALL)
    sd = model.state_dict()
    out = convert_state_dict(sd, harness.convert.config_from_timm(model))
    assert sorted(out) == sorted(sd)
    assert out["patch_embed.proj.weight"].shape == (192, 3 * 16 * 16)


def test_pretrained_weights_from_a_local_file(tmp_path):
    """The path a user with downloaded weights takes: timm loads a checkpoint file, then we convert it."""
    source = timm.create_model("vit_tiny_patch16_224", **SMALL)
    path = tmp_path / "vit_tiny.pth"
    torch.save(source.state_dict(), path)
    loaded = load_timm("vit_tiny_patch16_224", str(path), **SMALL)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    check_agreement(loaded, 32)


def test_pretrained_without_cache_says_how_to_fix():
    with pytest.raises(RuntimeError, match="Hugging Face cache|local checkpoint"):
        load_timm("vit_tiny_patch16_224", "pretrained")
    with pytest.raises(FileNotFoundError, match="neither"):
        load_timm("vit_tiny_patch16_224", "/no/such/file.pth")


def test_reference_can_share_the_library_weights():
    """from_timm(model, copy=False), for comparisons that only run both models: each (contiguous) weight is the
    library's own memory, and the reference computes exactly what the copying conversion computes (same values,
    same layouts, same operations: equal bit for bit). The default copies: no memory shared."""
    model = timm.create_model("vit_tiny_patch16_224", **SMALL).double().eval()
    lib_ptrs = {t.data_ptr() for t in model.state_dict().values()}
    shared, copied = harness.from_timm(model, copy=False), harness.from_timm(model)
    assert {p.data_ptr() for p in shared.parameters()} <= lib_ptrs
    assert not {p.data_ptr() for p in copied.parameters()} & lib_ptrs
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(shared(x), copied(x))
