"""From-scratch reference implementations. Only torch is imported here."""

from .attention import MultiHeadAttention, online_softmax_attention, scaled_dot_product_attention
from .clip import CLIP, CLIPConfig, CLIPTextConfig, clip_loss, clip_vision_config, siglip_loss
from .vit import VARIANTS, ViT, ViTConfig

__all__ = ["CLIP", "CLIPConfig", "CLIPTextConfig", "MultiHeadAttention", "VARIANTS", "ViT", "ViTConfig",
           "clip_loss", "clip_vision_config", "online_softmax_attention", "scaled_dot_product_attention",
           "siglip_loss"]
