import pytest
import torch

from harness import ViT, ViTConfig
from harness.reference.vit import VARIANTS, sincos_2d


def test_variant_table_and_patch_count():
    cfg = ViTConfig.from_variant("S/4", image_size=28, in_chans=1, num_classes=10)
    assert (cfg.width, cfg.depth, cfg.mlp_dim, cfg.heads) == VARIANTS["S"]
    assert cfg.num_patches == 49
    with pytest.raises(ValueError, match="unknown variant"):
        ViTConfig.from_variant("X/16")


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="not a multiple"):
        ViTConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="needs class_token"):
        ViTConfig(class_token=False, pool="token")


def test_patchify_is_raster_order_of_flattened_patches():
    cfg = ViTConfig(image_size=8, patch_size=4, in_chans=2, width=32, depth=1, mlp_dim=64, heads=2)
    vit = ViT(cfg)
    with torch.no_grad():
        vit.patch_embed.proj.weight.copy_(torch.eye(32))  # C·P² = 32: identity projection
        vit.patch_embed.proj.bias.zero_()
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8)
    tokens = vit.patch_embed(x)
    assert tokens.shape == (1, 4, 32)
    # token 1 is the top-right patch: channel 0 rows 0..3, columns 4..7, then channel 1
    assert torch.equal(tokens[0, 1], torch.cat([x[0, 0, :4, 4:].flatten(), x[0, 1, :4, 4:].flatten()]))


@pytest.mark.parametrize("kwargs", [dict(), dict(pool="avg", class_token=False, fc_norm=True),
                                    dict(pos_embed="sincos"), dict(pre_norm=True, patch_bias=False, act="quick_gelu")])
def test_shapes_and_fused_path(kwargs):
    cfg = ViTConfig(image_size=32, patch_size=8, num_classes=5, width=64, depth=2, mlp_dim=128, heads=4, **kwargs)
    vit = ViT(cfg).double().eval()
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    feats = vit.forward_features(x)
    assert feats.shape == (3, 16 + cfg.class_token, 64)
    assert vit.forward_head(feats, pre_logits=True).shape == (3, 64)
    explicit = vit(x)
    fused = vit.set_fused_attn(True)(x)
    assert explicit.shape == (3, 5)
    assert ((explicit - fused).norm() / explicit.norm()) < 1e-12


def test_wrong_image_size_is_a_clear_error():
    vit = ViT(ViTConfig(image_size=32, patch_size=8, width=64, depth=1, mlp_dim=64, heads=2))
    with pytest.raises(ValueError, match="expected 32×32"):
        vit(torch.randn(1, 3, 28, 28))


def test_sincos_table():
    pe = sincos_2d(4, 16)
    assert pe.shape == (16, 16)
    assert torch.allclose(pe[0], torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1] * 2))
