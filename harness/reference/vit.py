"""Vision Transformer (Dosovitskiy et al., 2021, "An Image is Worth 16x16 Words"), from scratch.

An image (B, C, H, W) is cut into N = HW/P² patches of P×P pixels, each flattened and mapped by
one Linear layer to a D-dimensional token (eq. 1). A learnable [CLS] token is prepended and
learned position embeddings are added; L pre-norm encoder blocks follow (eq. 2-3); the head reads
the [CLS] output (eq. 4), or the mean of the patch tokens in the global-average-pooling variant.

Only torch is imported. Parameter names follow timm's VisionTransformer (``patch_embed.proj``,
``cls_token``, ``pos_embed``, ``blocks.i.norm1``, ``attn.qkv``, ``mlp.fc1``, ``norm``, ``head``),
so converting timm weights is almost the identity (see harness/convert/timm.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from .attention import MultiHeadAttention
from .hybrid import HybridEmbed, StemConfig

# Model sizes, one line each: (width D, depth L, MLP width, heads h).
# ViT paper Table 1 (B, L, H); Ti and S from DeiT (Touvron et al., 2021); M from big_vision.
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 224  # input height = width, in pixels
    patch_size: int = 16  # P: each token is a P×P patch
    in_chans: int = 3  # C: input channels
    num_classes: int = 1000  # classifier outputs; 0 gives no head (features only)
    width: int = 768  # D: token dimension
    depth: int = 12  # L: number of encoder blocks
    mlp_dim: int = 3072  # hidden width of each block's MLP
    heads: int = 12  # h: attention heads per block
    qkv_bias: bool = True  # bias on the qkv projection
    class_token: bool = True  # prepend a learnable [CLS] token
    pool: str = "token"  # "token": head reads [CLS]; "avg": mean over patch tokens
    fc_norm: bool = False  # LayerNorm after pooling instead of after the last block (timm "avg" default)
    pos_embed: str = "learn"  # "learn": learned 1D table; "sincos": fixed 2D sin-cos
    pre_norm: bool = False  # LayerNorm before the first block (CLIP's ln_pre)
    patch_bias: bool = True  # bias on the patch projection (CLIP has none)
    head_bias: bool = True  # bias on the head (CLIP's image projection has none)
    act: str = "gelu"  # MLP activation: "gelu" (erf) or "quick_gelu" (x·σ(1.702x), OpenAI CLIP)
    norm_eps: float = 1e-6  # LayerNorm epsilon (timm ViT 1e-6, CLIP 1e-5)
    fused_attn: bool = False  # False: the explicit formula; True: torch's F.scaled_dot_product_attention
    stem: StemConfig | None = None  # a hybrid: patches of this ResNet stem's feature map (reference/hybrid.py)

    @property
    def grid(self) -> int:
        """Patches per side: of the image, or of the stem's feature map for a hybrid."""
        side = self.stem.feature_size(self.image_size) if self.stem else self.image_size
        return side // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @classmethod
    def from_variant(cls, name: str, **kwargs) -> "ViTConfig":
        """'B/16' -> ViT-Base with 16-pixel patches; other fields from kwargs."""
        size, _, patch = name.partition("/")
        if size not in VARIANTS or not patch.isdigit():
            raise ValueError(f"unknown variant {name!r}: use SIZE/PATCH with SIZE in {sorted(VARIANTS)}, e.g. 'B/16'")
        width, depth, mlp_dim, heads = VARIANTS[size]
        base = dict(width=width, depth=depth, mlp_dim=mlp_dim, heads=heads, patch_size=int(patch))
        return cls(**{**base, **kwargs})

    def __post_init__(self):
        side = self.stem.feature_size(self.image_size) if self.stem else self.image_size
        if side % self.patch_size:
            what = f"the stem's {side}×{side} feature map" if self.stem else f"image_size {self.image_size}"
            raise ValueError(f"{what} is not a multiple of patch_size {self.patch_size}")
        if self.pool not in ("token", "avg"):
            raise ValueError(f"pool must be 'token' or 'avg', got {self.pool!r}")
        if self.pool == "token" and not self.class_token:
            raise ValueError("pool='token' needs class_token=True; use pool='avg' without a [CLS] token")
        if self.pos_embed not in ("learn", "sincos"):
            raise ValueError(f"pos_embed must be 'learn' or 'sincos', got {self.pos_embed!r}")
        if self.act not in ("gelu", "quick_gelu"):
            raise ValueError(f"act must be 'gelu' or 'quick_gelu', got {self.act!r}")


class QuickGELU(nn.Module):
    """x·σ(1.702x), the GELU approximation of the original OpenAI CLIP weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class PatchEmbed(nn.Module):
    """Patchify as an explicit reshape, then one Linear layer (not a Conv2d)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.image_size = config.image_size
        patch_dim = config.in_chans * config.patch_size**2
        self.proj = nn.Linear(patch_dim, config.width, bias=config.patch_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        if (H, W) != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}×{self.image_size} images, got {H}×{W}")
        P = self.patch_size
        x = x.reshape(B, C, H // P, P, W // P, P)  # (B, C, H/P, P, W/P, P)
        x = x.permute(0, 2, 4, 1, 3, 5)  # (B, H/P, W/P, C, P, P): patches in raster order
        x = x.reshape(B, (H // P) * (W // P), C * P * P)  # (B, N, C·P²)
        return self.proj(x)  # (B, N, D)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = QuickGELU() if act == "quick_gelu" else nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm encoder block: x + MSA(LN(x)), then x + MLP(LN(x)). Shared by ViT and CLIP's text tower."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, qkv_bias: bool = True, act: str = "gelu",
                 norm_eps: float = 1e-6, fused_attn: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiHeadAttention(dim, heads, qkv_bias, fused=fused_attn)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim, act)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)
        return x + self.mlp(self.norm2(x))


def sincos_2d(grid: int, width: int, temperature: float = 10_000.0) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding (big_vision's posemb_sincos_2d), shape (grid², width)."""
    if width % 4:
        raise ValueError(f"sin-cos position embedding needs width divisible by 4, got {width}")
    y, x = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    omega = torch.arange(width // 4, dtype=torch.float64) / max(width // 4 - 1, 1)
    omega = 1.0 / temperature**omega  # (D/4,)
    y = y.flatten()[:, None] * omega[None, :]  # (N, D/4)
    x = x.flatten()[:, None] * omega[None, :]  # (N, D/4)
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).float()  # (N, D)


class ViT(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        D, N = config.width, config.num_patches
        self.num_prefix_tokens = 1 if config.class_token else 0
        self.patch_embed = (HybridEmbed(config.image_size, config.patch_size, config.in_chans, D, config.patch_bias,
                                        config.stem) if config.stem else PatchEmbed(config))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if config.class_token else None
        if config.pos_embed == "learn":
            self.pos_embed = nn.Parameter(torch.randn(1, N + self.num_prefix_tokens, D) * 0.02)
        else:  # fixed; the [CLS] token, if any, gets a zero position embedding
            table = torch.cat([torch.zeros(self.num_prefix_tokens, D), sincos_2d(config.grid, D)])
            self.register_buffer("pos_embed", table[None], persistent=False)
        self.norm_pre = nn.LayerNorm(D, eps=config.norm_eps) if config.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList([
            Block(D, config.heads, config.mlp_dim, config.qkv_bias, config.act, config.norm_eps, config.fused_attn)
            for _ in range(config.depth)
        ])
        self.norm = nn.Identity() if config.fc_norm else nn.LayerNorm(D, eps=config.norm_eps)
        self.fc_norm = nn.LayerNorm(D, eps=config.norm_eps) if config.fc_norm else nn.Identity()
        self.head = nn.Linear(D, config.num_classes, bias=config.head_bias) if config.num_classes else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, prefix + N, D) tokens after the last block and its norm."""
        x = self.patch_embed(x)  # (B, N, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1)  # (B, 1 + N, D)
        x = x + self.pos_embed
        x = self.norm_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens -> pooled features (pre_logits=True) or class logits."""
        if self.config.pool == "token":
            x = x[:, 0]  # (B, D): the [CLS] output
        else:
            x = x[:, self.num_prefix_tokens :].mean(dim=1)  # (B, D): mean over patch tokens
        x = self.fc_norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def set_fused_attn(self, fused: bool) -> "ViT":
        """Switch every block between the explicit formula and torch's fused kernel."""
        self.config = replace(self.config, fused_attn=fused)
        for block in self.blocks:
            block.attn.fused = fused
        return self
