"""What a model adapter tells the library: where attention lives in an architecture, and in which role.

Adapters copy nothing from the models' own code. Each lists the model types it knows and, for a model
instance, every attention module with its `LayerInfo` (role, stack, index, head shape). Everything
else (the attention math, masks, caches) is shared and architecture-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..variants.base import LayerInfo


class UnsupportedModelError(TypeError):
    """The model's architecture has no adapter, or its attention computes something no variant does."""


@dataclass(frozen=True)
class AttentionSite:
    """One attention module of a model and the facts about it.

    Attributes:
        module: the module that calls the attention function (the variant is attached to it).
        layer: the facts about it.
        block: the module holding all of the attention's projections, output included, when that is a
            wrapper around ``module`` (ViT before transformers 5.10); None when ``module`` holds them.
    """

    module: nn.Module
    layer: LayerInfo
    block: nn.Module | None = None

    @property
    def projections_owner(self) -> nn.Module:
        return self.block if self.block is not None else self.module


class ModelAdapter:
    """Base of the per-architecture adapters.

    Attributes:
        model_types: values of ``config.model_type`` this adapter handles.
        targets: the attention stacks the architecture has, e.g. ``("encoder", "decoder", "cross")``.
    """

    model_types: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()

    def sites(self, model: nn.Module) -> list[AttentionSite]:
        """Every attention module of ``model``, in layer order within each target."""
        raise NotImplementedError


def head_count(config: object, *names: str) -> int:
    """The first of ``names`` that ``config`` defines (head counts go by different names per model)."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise AttributeError(f"config has none of {names}")
