"""`full`: exact softmax attention on the chunked engine, the control every variant is judged by."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..context import AttentionContext
from ..masked import masked_attention
from .base import AttentionVariant, VariantOptions, register_variant


@dataclass(frozen=True)
class FullOptions(VariantOptions):
    """Options of `full` (none): exact attention, causal or bidirectional as the layer is."""


@register_variant("exact attention on the chunked engine (the control)")
class FullAttention(AttentionVariant):
    """Exact attention computed by the same engine as every mask variant's reference path."""

    name = "full"
    options_class = FullOptions

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext
    ) -> torch.Tensor:
        return masked_attention(query, key, value, context)
