"""The reference hybrid (a ResNet-v2 stem's feature map as the patches) against timm's hybrid ViTs."""

import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F

import harness
from harness.convert import UnsupportedModelError
from harness.evals import agreement, data_scale
from harness.methods.scale_runs import build_architecture
from harness.reference.hybrid import StemConfig, same_pad
from harness.run.suites import load_suite


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name,kwargs", [
    ("vit_tiny_r_s16_p8_224", {"depth": 2}),  # the stem alone, patch 8
    ("vit_small_r26_s32_224", {"depth": 1}),  # R26: four stages of two bottlenecks, patch 1
    ("vit_base_r50_s16_224", {"depth": 1, "img_size": 96}),  # R50 (3, 4, 9), another image size
])
def test_from_timm_matches_in_float64_and_float32(name, kwargs):
    lib = timm.create_model(name, **kwargs).eval()
    size = lib.patch_embed.img_size[0]
    for dtype, tol in [(torch.float64, 1e-12), (torch.float32, 1e-5)]:
        m = lib.to(dtype)
        ref = harness.from_timm(m)
        assert ref.config.stem is not None and next(ref.parameters()).dtype == dtype
        x = torch.randn(2, 3, size, size, dtype=dtype)
        with torch.no_grad():
            assert rel(ref(x), m(x)) < tol
            assert rel(ref.set_fused_attn(True)(x), m(x)) < tol
            # the stem's feature map itself, not only the logits
            assert rel(ref.patch_embed.backbone(x), m.patch_embed.backbone(x)) < tol


def test_stage_rows_cover_the_stem_and_pass():
    lib = timm.create_model("vit_small_r26_s32_224", depth=1, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    rows = pd.DataFrame(agreement.model_rows(lib, x, ["float64", "float32", "bfloat16"], torch.device("cpu")))
    stages = set(rows[rows.check == "block"].stage)
    assert {"stem", "stem.stages.0", "stem.stages.3", "patch_embed", "blocks.0"} <= stages
    assert rows.passed.all(), rows[~rows.passed][["dtype", "backend", "stage", "rel_err", "tolerance"]]
    grads = agreement.gradient_rows(timm.create_model("vit_tiny_r_s16_p8_224", depth=1, img_size=64).eval(), x,
                                    ["float64", "float32"])
    assert all(r["passed"] for r in grads) and grads[0]["n_params"] > 10


def test_same_padding_is_tensorflows():
    from timm.layers.padding import pad_same

    for size in (7, 8, 13, 28):
        x = torch.randn(1, 2, size, size + 1)
        for k, s in ((7, 2), (3, 2), (1, 2), (3, 1)):
            assert torch.equal(same_pad(x, k, s), pad_same(x, [k, k], [s, s]))
            assert F.max_pool2d(same_pad(x, k, s, float("-inf")), k, s).shape[-1] == -(-(size + 1) // s)


def test_backbones_the_reference_lacks_are_refused_by_name():
    with pytest.raises(UnsupportedModelError, match="FeatureListNet backbone.*not ResNet-D with BatchNorm"):
        harness.from_timm(timm.create_model("vit_small_resnet26d_224", depth=1))


def test_data_scale_hybrid_is_declared_from_json_and_comparable():
    cfg = load_suite("data_scale").get_config("default")
    arch = {a["id"]: a for a in cfg["architectures"]}["hybrid_reference"]
    model = build_architecture(arch)
    assert isinstance(model.config.stem, StemConfig) and model.config.num_patches == 16
    params = sum(p.numel() for p in model.parameters())
    assert 100_000 < params < 150_000  # the ViT has 139k
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_finding_places_the_hybrid():
    s = pd.DataFrame({"architecture": ["v", "v", "c", "c", "h", "h"], "train_images": [10, 100] * 3,
                      "accuracy_mean": [50.0, 65.0, 60.0, 70.0, 55.0, 72.0]})
    text = data_scale.finding(s, "v", "c", "h")
    assert "c is ahead at every size" in text
    assert "10: between them, above the ViT (+5.0 vs ViT, -5.0 vs CNN)" in text
    assert "100: above both (+7.0 vs ViT, +2.0 vs CNN)" in text
