"""From-scratch reference implementations. Only torch is imported here."""

from .attention import MultiHeadAttention, scaled_dot_product_attention
from .vit import VARIANTS, ViT, ViTConfig

__all__ = ["MultiHeadAttention", "scaled_dot_product_attention", "VARIANTS", "ViT", "ViTConfig"]
