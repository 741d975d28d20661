"""hf-efficient-attn: one call gives a Hugging Face model an efficient attention variant.

    from hf_efficient_attn import patch_model
    model = patch_model(model, "sliding", window=1024)
"""

__version__ = "0.1.0"

from . import compat  # refuses an unsupported transformers release, saying what to install  # noqa: F401
from .api import PatchError, from_pretrained, is_patched, list_variants, patch_model, unpatch_model
from .fused_path import FusedPathError, FusedPathFallbackWarning
from .patches import UnsupportedModelError, supported_model_types
from .variants import (
    ExactPatternWarning,
    FlashOptions,
    FullOptions,
    LinearOptions,
    LowRankOptions,
    NystromOptions,
    PerformerOptions,
    SlidingOptions,
    SparseOptions,
    VariantError,
    VariantOptions,
)

__all__ = [
    "ExactPatternWarning",
    "FlashOptions",
    "FusedPathError",
    "FusedPathFallbackWarning",
    "FullOptions",
    "LinearOptions",
    "LowRankOptions",
    "NystromOptions",
    "PatchError",
    "PerformerOptions",
    "SlidingOptions",
    "SparseOptions",
    "UnsupportedModelError",
    "VariantError",
    "VariantOptions",
    "from_pretrained",
    "is_patched",
    "list_variants",
    "patch_model",
    "supported_model_types",
    "unpatch_model",
]
