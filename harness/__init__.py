"""vitclip-harness: reference attention, ViT and CLIP, checked against timm and open_clip."""

from .convert import from_timm
from .reference import MultiHeadAttention, ViT, ViTConfig, scaled_dot_product_attention

__version__ = "0.1.0"
__all__ = ["MultiHeadAttention", "ViT", "ViTConfig", "from_timm", "scaled_dot_product_attention", "__version__"]
