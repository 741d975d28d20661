"""`linear`: linear attention with a learned feature map (Hedgehog, Zhang et al., 2024).

Each key/value head ``h`` has a weight ``W_h`` (``head_dim × feature_dim``); its feature map is

    φ_h(x) = softmax([x W_h, -x W_h])      (one softmax over the 2·feature_dim features)

applied to the keys of head ``h`` and to the queries of the query heads that share it (GQA). Attention
is then ``φ(q)·φ(k)`` in place of ``exp(q·k·scaling)`` (see `kernelized`): linear in the sequence
length, bidirectional or causal through chunked prefix sums. It approximates softmax attention only
as well as the map has been trained to (Hedgehog distils each head's attention weights into it);
``W`` starts as an identity-like matrix (column ``j`` is the unit vector ``j mod head_dim``), so the
features start from the head's own coordinates. The weights are parameters of the variant module and
train, save and load with the model. Attention dropout does not apply (there is no probability matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..context import AttentionContext
from .base import AttentionVariant, LayerInfo, VariantOptions, positive_int, register_variant
from .kernelized import kernelized_attention


@dataclass(frozen=True)
class LinearOptions(VariantOptions):
    """Options of `linear`.

    Attributes:
        feature_dim: size of ``x W`` (the map has twice as many features); None means the head
            dimension. Default None.
    """

    feature_dim: int | None = None

    def validate(self) -> None:
        if self.feature_dim is not None:
            positive_int("feature_dim", self.feature_dim)


@register_variant("linear attention with a learned Hedgehog feature map (linear time, trainable)")
class HedgehogLinearAttention(AttentionVariant):
    """Linear attention through a learned softmax feature map; see the module docstring."""

    name = "linear"
    options_class = LinearOptions
    options: LinearOptions

    def __init__(self, options: LinearOptions, layer: LayerInfo):
        super().__init__(options, layer)
        features = options.feature_dim or layer.head_dim
        identity_like = torch.eye(layer.head_dim)[:, torch.arange(features) % layer.head_dim]
        self.weight = nn.Parameter(identity_like.repeat(layer.num_kv_heads, 1, 1))

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext
    ) -> torch.Tensor:
        compute_dtype = torch.promote_types(query.dtype, torch.float32)
        weight = self.weight.to(compute_dtype)
        batch, q_heads, q_len, head_dim = query.shape
        kv_heads = key.shape[1]
        grouped = query.to(compute_dtype).reshape(batch, kv_heads, q_heads // kv_heads, q_len, head_dim)
        query_features = feature_map(torch.einsum("bhgqd,hdf->bhgqf", grouped, weight))
        key_features = feature_map(torch.einsum("bhkd,hdf->bhkf", key.to(compute_dtype), weight))
        query_features = query_features.reshape(batch, q_heads, q_len, -1)
        chunk = max(64, head_dim)
        output = kernelized_attention(query_features, key_features, value, context, chunk_size=chunk)
        return output.to(query.dtype)


def feature_map(projected: torch.Tensor) -> torch.Tensor:
    """Hedgehog's features of ``x W``: a softmax over ``[x W, -x W]``."""
    return torch.softmax(torch.cat([projected, -projected], dim=-1), dim=-1)
