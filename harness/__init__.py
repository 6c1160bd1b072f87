"""vitclip-harness: reference attention, ViT and CLIP, checked against timm and open_clip."""

from .convert import from_open_clip, from_timm, to_open_clip
from .reference import (
    CLIP,
    CLIPConfig,
    CLIPTextConfig,
    MultiHeadAttention,
    ViT,
    ViTConfig,
    clip_loss,
    scaled_dot_product_attention,
)
from .zero_shot import zero_shot_classifier

__version__ = "0.1.0"
__all__ = ["CLIP", "CLIPConfig", "CLIPTextConfig", "MultiHeadAttention", "ViT", "ViTConfig", "clip_loss",
           "from_open_clip", "from_timm", "scaled_dot_product_attention", "to_open_clip", "zero_shot_classifier",
           "__version__"]
