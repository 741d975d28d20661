"""ViT: bidirectional self-attention over a CLS token and a grid of image patches."""

from __future__ import annotations

from torch import nn

from ..variants.base import LayerInfo, Role
from .base import AttentionSite, ModelAdapter


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _self_attention(layer: nn.Module) -> nn.Module:
    """The module that calls the attention function: ``layer.attention`` in transformers 5.10 and later,
    ``layer.attention.attention`` (inside an output-projection wrapper) before."""
    attention = layer.attention
    inner = getattr(attention, "attention", None)
    return inner if isinstance(inner, nn.Module) else attention


def _layers(base: nn.Module) -> nn.ModuleList:
    """The encoder layers (``base.layers`` in transformers 5.x; ``base.encoder.layer`` before)."""
    layers = getattr(base, "layers", None)
    return layers if layers is not None else base.encoder.layer


class ViTAdapter(ModelAdapter):
    """Self-attention of every encoder layer; the CLS token comes before the patch grid."""

    model_types = ("vit",)
    targets = ("encoder",)

    def sites(self, model: nn.Module) -> list[AttentionSite]:
        config = model.config
        image_rows, image_columns = _pair(config.image_size)
        patch_rows, patch_columns = _pair(config.patch_size)
        grid = (image_rows // patch_rows, image_columns // patch_columns)
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return [
            AttentionSite(
                module=_self_attention(layer),
                block=layer.attention if _self_attention(layer) is not layer.attention else None,
                layer=LayerInfo(
                    role=Role.BIDIRECTIONAL,
                    target="encoder",
                    layer_index=index,
                    num_heads=heads,
                    num_kv_heads=heads,
                    head_dim=head_dim,
                    sequence_length=1 + grid[0] * grid[1],
                    grid=grid,
                    prefix_tokens=1,
                ),
            )
            for index, layer in enumerate(_layers(model.base_model))
        ]
