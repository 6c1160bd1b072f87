"""Converters from library models to the reference implementations (pure state_dict mappers)."""

from .common import ConversionError, UnsupportedModelError
from .hf import config_from_hf, from_hf
from .open_clip import config_from_open_clip, from_open_clip, to_open_clip
from .timm import config_from_timm, convert_state_dict, from_timm

__all__ = ["ConversionError", "UnsupportedModelError", "config_from_hf", "config_from_open_clip", "config_from_timm",
           "convert_state_dict", "from_hf", "from_open_clip", "from_timm", "to_open_clip"]
