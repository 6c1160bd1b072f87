"""vitclip-harness: reference attention, ViT and CLIP, checked against timm, open_clip and transformers."""

from .convert import from_hf, from_open_clip, from_timm, to_open_clip
from .evaluation import evaluate
from .methods.classifier import zero_shot_classifier
from .methods.probe import linear_probe  # the function, beside zero_shot_classifier
from .reference import (
           CLIP,
           CLIPConfig,
           CLIPTextConfig,
           MultiHeadAttention,
           ViT,
           ViTConfig,
           clip_loss,
           scaled_dot_product_attention,
           siglip_loss,
)
from .tools.compare import compare  # noqa: E402  (the function; the module is harness.compare in sys.modules)

__version__ = "0.1.0"
__all__ = ["CLIP", "CLIPConfig", "CLIPTextConfig", "MultiHeadAttention", "ViT", "ViTConfig", "clip_loss", "compare",
           "evaluate", "from_hf", "from_open_clip", "from_timm", "linear_probe", "scaled_dot_product_attention",
           "siglip_loss", "to_open_clip", "zero_shot_classifier", "__version__"]
