"""Decoder-only LMs whose attention follows Llama's: Llama, Mistral, Qwen2 (GQA, RoPE, causal)."""

from __future__ import annotations

from torch import nn

from ..variants.base import LayerInfo, Role
from .base import AttentionSite, ModelAdapter, head_count


class LlamaFamilyAdapter(ModelAdapter):
    """Causal self-attention in every decoder layer (``model.layers[i].self_attn``)."""

    model_types = ("llama", "mistral", "qwen2")
    targets = ("decoder",)

    def sites(self, model: nn.Module) -> list[AttentionSite]:
        config = model.config
        heads = head_count(config, "num_attention_heads")
        kv_heads = head_count(config, "num_key_value_heads", "num_attention_heads")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return [
            AttentionSite(
                module=layer.self_attn,
                layer=LayerInfo(
                    role=Role.CAUSAL,
                    target="decoder",
                    layer_index=index,
                    num_heads=heads,
                    num_kv_heads=kv_heads,
                    head_dim=head_dim,
                    max_length=getattr(config, "max_position_embeddings", None),
                ),
            )
            for index, layer in enumerate(model.base_model.layers)
        ]
