"""The variants: each module registers one (options dataclass + per-layer module) on import."""

from .axial import AxialAttention, AxialOptions
from .base import (
    VARIANTS,
    AttentionVariant,
    ExactPatternWarning,
    LayerInfo,
    Role,
    VariantError,
    VariantOptions,
    VariantSpec,
)
from .flash import FlashAttention, FlashOptions
from .full import FullAttention, FullOptions
from .linear import HedgehogLinearAttention, LinearOptions
from .lowrank import LinformerAttention, LowRankOptions
from .lsh import LSHAttention, LSHOptions
from .nystrom import NystromAttention, NystromOptions
from .performer import PerformerAttention, PerformerOptions
from .sliding import SlidingOptions, SlidingWindowAttention
from .sparse import BlockSparseAttention, SparseOptions

__all__ = [
    "VARIANTS",
    "AttentionVariant",
    "AxialAttention",
    "AxialOptions",
    "BlockSparseAttention",
    "ExactPatternWarning",
    "FlashAttention",
    "FlashOptions",
    "FullAttention",
    "FullOptions",
    "HedgehogLinearAttention",
    "LayerInfo",
    "LinearOptions",
    "LinformerAttention",
    "LowRankOptions",
    "LSHAttention",
    "LSHOptions",
    "NystromAttention",
    "NystromOptions",
    "PerformerAttention",
    "PerformerOptions",
    "Role",
    "SlidingOptions",
    "SlidingWindowAttention",
    "SparseOptions",
    "VariantError",
    "VariantOptions",
    "VariantSpec",
]
