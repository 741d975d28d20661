"""hf-efficient-attn: one call gives a Hugging Face model an efficient attention variant.

    from hf_efficient_attn import patch_model
    model = patch_model(model, "sliding", window=1024)

The public names are imported from their modules on first use, so importing the package (as the
``hf-efficient-attn`` command line does before it parses its arguments) does not import torch or
transformers. The first use also checks the installed transformers release (`compat`), and refuses
an unsupported one saying what to install. Importing the package installs `model_hooks` (when
transformers' modeling module loads), so that transformers' own loaders restore a saved patch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import model_hooks

__version__ = "0.1.0"

_PUBLIC_NAMES: dict[str, str] = {
    "ExactPatternWarning": "variants",
    "FlashOptions": "variants",
    "FullOptions": "variants",
    "FusedPathError": "fused_path",
    "FusedPathFallbackWarning": "fused_path",
    "LinearOptions": "variants",
    "LowRankOptions": "variants",
    "NystromOptions": "variants",
    "PatchError": "api",
    "PerformerOptions": "variants",
    "SlidingOptions": "variants",
    "SparseOptions": "variants",
    "UnsupportedModelError": "patches",
    "VariantError": "variants",
    "VariantOptions": "variants",
    "from_pretrained": "api",
    "is_patched": "api",
    "list_variants": "api",
    "patch_model": "api",
    "supported_model_types": "patches",
    "unpatch_model": "api",
}
"""Each public name and the submodule that defines it."""

__all__ = sorted(_PUBLIC_NAMES)

model_hooks.install()

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from .api import PatchError, from_pretrained, is_patched, list_variants, patch_model, unpatch_model  # noqa: F401
    from .fused_path import FusedPathError, FusedPathFallbackWarning  # noqa: F401
    from .patches import UnsupportedModelError, supported_model_types  # noqa: F401
    from .variants import (  # noqa: F401
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


def __getattr__(name: str) -> object:
    """Import a public name from its submodule on first use (PEP 562), after the transformers check."""
    module = _PUBLIC_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module(".compat", __name__)  # refuses an unsupported transformers release, saying what to install
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
