"""The variants: each module registers one (options dataclass + per-layer module) on import."""

from .base import VARIANTS, AttentionVariant, LayerInfo, Role, VariantError, VariantOptions, VariantSpec
from .full import FullAttention, FullOptions
from .sliding import SlidingOptions, SlidingWindowAttention

__all__ = [
    "VARIANTS",
    "AttentionVariant",
    "FullAttention",
    "FullOptions",
    "LayerInfo",
    "Role",
    "SlidingOptions",
    "SlidingWindowAttention",
    "VariantError",
    "VariantOptions",
    "VariantSpec",
]
