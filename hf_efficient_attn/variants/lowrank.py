"""`lowrank`: Linformer (Wang et al., 2020), softmax attention over keys and values projected along the
sequence to a fixed rank.

With learned ``E, F ∈ R^{rank×n}`` (``n`` the layer's fixed key length, shared by the heads of a layer)

    out = softmax(Q (E K)ᵀ · scaling) (F V)

so each query attends to ``rank`` mixtures of keys instead of all ``n`` keys: O(n·rank) time and
memory. It is an approximation (a rank-``rank`` factorisation of the attention matrix) that needs
training to be good; ``E`` and ``F`` start as segment means (row ``r`` averages the ``r``-th of
``rank`` contiguous segments of positions), so before training each query attends to pooled
segments of the sequence. Calls with fewer keys than ``n`` use the first columns of ``E`` and ``F``;
padded keys and values are zeroed before the projection. Only for layers whose key length is fixed
(bidirectional encoders such as ViT's and Whisper's, and cross-attention): causal layers are refused,
a projection along the sequence would mix future tokens into the past. Attention dropout applies to
the ``rank`` probabilities of each query.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ..context import AttentionContext
from ..masked import masked_attention
from .base import (
    AttentionVariant,
    LayerInfo,
    Role,
    VariantError,
    VariantOptions,
    positive_int,
    register_variant,
)


@dataclass(frozen=True)
class LowRankOptions(VariantOptions):
    """Options of `lowrank`.

    Attributes:
        rank: projected length of keys and values (``k`` in the paper); at most the layer's key length.
            Default 128.
        share_kv: use one projection for keys and values (``E = F``). Default False.
    """

    rank: int = 128
    share_kv: bool = False

    def validate(self) -> None:
        positive_int("rank", self.rank)
        if not isinstance(self.share_kv, bool):
            raise VariantError(f"`share_kv` must be True or False, got {self.share_kv!r}.")


@register_variant("Linformer: keys and values projected along the sequence to a learned rank (fixed-length layers)")
class LinformerAttention(AttentionVariant):
    """Linformer attention; see the module docstring."""

    name = "lowrank"
    options_class = LowRankOptions
    roles = frozenset({Role.BIDIRECTIONAL, Role.CROSS})
    options: LowRankOptions

    def __init__(self, options: LowRankOptions, layer: LayerInfo):
        super().__init__(options, layer)
        self.key_projection = nn.Parameter(segment_means(options.rank, layer.sequence_length))
        self.value_projection = None if options.share_kv else nn.Parameter(self.key_projection.detach().clone())

    @classmethod
    def check_layer(cls, options: LowRankOptions, layer: LayerInfo) -> None:
        super().check_layer(options, layer)
        if layer.sequence_length is None:
            raise VariantError(
                f"'lowrank' needs a fixed key length, which {layer.target} layers of this model do not have; "
                "use 'performer', 'linear' or 'sparse' there."
            )
        if options.rank > layer.sequence_length:
            raise VariantError(
                f"rank {options.rank} exceeds the sequence length {layer.sequence_length} of {layer.target} "
                f"layers; choose rank <= {layer.sequence_length}."
            )

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext
    ) -> torch.Tensor:
        length = key.shape[-2]
        if length > self.key_projection.shape[-1]:
            raise VariantError(
                f"'lowrank' was built for at most {self.key_projection.shape[-1]} keys in {self.layer.target} "
                f"layer {self.layer.layer_index} but got {length}; inputs longer than the model's fixed length "
                "cannot be projected."
            )
        if context.dense_mask is not None:
            raise VariantError("'lowrank' cannot apply a 4-D attention mask; pass a 2-D padding mask instead.")
        compute_dtype = torch.promote_types(query.dtype, torch.float32)
        key, value = key.to(compute_dtype), value.to(compute_dtype)
        if context.key_padding is not None:
            real = context.key_padding[:, None, :, None].to(compute_dtype)
            key, value = key * real, value * real
        key_projection = self.key_projection[:, :length].to(compute_dtype)
        value_projection = key_projection if self.value_projection is None else self.value_projection[:, :length]
        projected_key = torch.einsum("rn,bhnd->bhrd", key_projection, key)
        projected_value = torch.einsum("rn,bhnd->bhrd", value_projection.to(compute_dtype), value)
        projected = dataclasses.replace(
            context,
            key_positions=torch.arange(self.options.rank, device=key.device),
            key_padding=None,
            sequence_start=None,
            query_documents=None,
            key_documents=None,
            dense_mask=None,
            causal=False,
            native_window=None,
        )
        return masked_attention(query, projected_key, projected_value, projected)


def segment_means(rank: int, length: int) -> torch.Tensor:
    """``[rank, length]``: row ``r`` averages positions ``[r·length/rank, (r+1)·length/rank)``."""
    segment = torch.arange(length) * rank // length
    rows = (segment[None, :] == torch.arange(rank)[:, None]).to(torch.float32)
    return rows / rows.sum(-1, keepdim=True)
