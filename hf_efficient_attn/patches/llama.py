"""Decoder-only LMs whose attention follows Llama's (GQA, RoPE, causal, ``model.layers[i].self_attn``
calling transformers' attention interface): Llama, Mistral, Qwen2 and Qwen3, Gemma and Gemma 3 (text),
Phi-3, Granite, OLMo 2, SmolLM3, Cohere and StarCoder2.

What differs between them happens outside the attention call (query/key norms, the scaling transformers
passes, per-layer sliding windows, which the attention function receives as ``sliding_window``), with
one exception: a logit soft-cap (Gemma 2, or Gemma 3 configured with one) changes the softmax itself,
which no variant computes, so such a model is refused.
"""

from __future__ import annotations

from torch import nn

from ..variants.base import LayerInfo, Role
from .base import AttentionSite, ModelAdapter, UnsupportedModelError, head_count


class LlamaFamilyAdapter(ModelAdapter):
    """Causal self-attention in every decoder layer (``model.layers[i].self_attn``)."""

    model_types = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3_text", "phi3", "granite", "olmo2",
                   "smollm3", "cohere", "starcoder2")
    targets = ("decoder",)

    def sites(self, model: nn.Module) -> list[AttentionSite]:
        config = model.config
        softcap = getattr(config, "attn_logit_softcapping", None)
        if softcap is not None:
            raise UnsupportedModelError(
                f"This {type(model).__name__} soft-caps its attention logits (attn_logit_softcapping={softcap}), "
                "which no variant computes. Load it with attn_logit_softcapping=None if its quality allows, "
                "or leave it unpatched."
            )
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
                    native_window=native_window(layer.self_attn, config),
                ),
            )
            for index, layer in enumerate(model.base_model.layers)
        ]


WINDOW_FROM_CONFIG = ("mistral", "phi3", "starcoder2")
"""Families whose attention passes the config's ``sliding_window`` to every layer; the others that have a
window (Qwen2/3, Gemma 3, SmolLM3) keep each layer's on the module, and the rest have none."""


def native_window(attention: nn.Module, config) -> int | None:
    """The sliding window ``attention`` passes transformers' attention function, or None."""
    if hasattr(attention, "sliding_window"):
        return attention.sliding_window
    if config.model_type in WINDOW_FROM_CONFIG:
        return getattr(config, "sliding_window", None)
    return None
