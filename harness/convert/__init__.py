"""Converters from library models to the reference implementations (pure state_dict mappers)."""

from .timm import ConversionError, UnsupportedModelError, config_from_timm, convert_state_dict, from_timm

__all__ = ["ConversionError", "UnsupportedModelError", "config_from_timm", "convert_state_dict", "from_timm"]
