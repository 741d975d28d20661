"""Per-architecture adapters: where attention lives in each supported model family."""

from __future__ import annotations

from torch import nn

from .base import AttentionSite, ModelAdapter, UnsupportedModelError
from .llama import LlamaFamilyAdapter
from .vit import ViTAdapter
from .whisper import WhisperAdapter

ADAPTERS: tuple[ModelAdapter, ...] = (LlamaFamilyAdapter(), WhisperAdapter(), ViTAdapter())


def supported_model_types() -> list[str]:
    """Every ``config.model_type`` an adapter handles."""
    return sorted(model_type for adapter in ADAPTERS for model_type in adapter.model_types)


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter for ``model``'s architecture, or `UnsupportedModelError` naming the supported ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedModelError(
        f"{type(model).__name__} (model_type={model_type!r}) is not supported. Supported model types: "
        f"{', '.join(supported_model_types())}."
    )


__all__ = ["ADAPTERS", "AttentionSite", "ModelAdapter", "UnsupportedModelError", "adapter_for", "supported_model_types"]
