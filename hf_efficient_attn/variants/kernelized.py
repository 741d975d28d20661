"""Attention through positive feature maps, ``φ(q)·φ(k)`` in place of ``exp(q·k)``: the shared engine of
the linear families (`performer`, `linear`).

With features ``φ`` the output of query ``i`` is

    out_i = Σ_j φ(q_i)·φ(k_j) v_j / Σ_j φ(q_i)·φ(k_j)

over the keys ``j`` it may see. Bidirectional layers sum over every real key once: ``S = Σ φ(k_j) v_jᵀ``,
``z = Σ φ(k_j)``, so the cost is O(N·M·D) for M features. Causal layers need prefix sums; rather than
storing one ``M×D`` state per token, queries go in chunks: keys at or before a chunk's first query
position are folded into a running state, and the few keys between the chunk's first and last query
positions are handled by a masked quadratic term inside the chunk. Memory is O(N·M) plus one ``M×D``
state per chunk. Causality is by absolute position (``key position <= query position``), so a KV
cache works. Padded keys contribute nothing, and rows that see no key give zeros.

Packed documents and 4-D caller masks cannot be expressed through prefix sums and are refused; the
model's own sliding window (Mistral's) is not applied, the family approximates full attention.
"""

from __future__ import annotations

import torch

from ..context import AttentionContext
from ..errors import VariantError


def kernelized_attention(
    query_features: torch.Tensor,
    key_features: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Feature-map attention.

    Args:
        query_features: non-negative ``[batch, q_heads, q_len, features]``.
        key_features: non-negative ``[batch, kv_heads, k_len, features]``, ``q_heads % kv_heads == 0``.
        value: ``[batch, kv_heads, k_len, head_dim]``.
        context: positions, padding and causality of this call.
        chunk_size: queries per chunk in causal layers.

    Returns:
        ``[batch, q_heads, q_len, head_dim]`` in the features' dtype.
    """
    if context.key_documents is not None or context.dense_mask is not None:
        raise VariantError(
            "Feature-map attention cannot apply packed-document boundaries or a 4-D attention mask; "
            "pass a 2-D padding mask and unpacked sequences, or use an exact variant ('full', 'sliding', 'sparse')."
        )
    batch, q_heads, q_len, features = query_features.shape
    kv_heads = key_features.shape[1]
    query_features = query_features.reshape(batch, kv_heads, q_heads // kv_heads, q_len, features)
    value = value.to(key_features.dtype)
    if context.key_padding is not None:
        key_features = key_features * context.key_padding[:, None, :, None].to(key_features.dtype)
    if context.causal:
        output = _causal(query_features, key_features, value, context, chunk_size)
    else:
        state = torch.einsum("bhkm,bhkd->bhmd", key_features, value)
        numerator = torch.einsum("bhgqm,bhmd->bhgqd", query_features, state)
        denominator = torch.einsum("bhgqm,bhm->bhgq", query_features, key_features.sum(-2))
        output = _normalize(numerator, denominator)
    return output.reshape(batch, q_heads, q_len, -1)


def _causal(
    query_features: torch.Tensor,
    key_features: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    chunk_size: int,
) -> torch.Tensor:
    """Chunked prefix sums; ``query_features`` grouped ``[b, kv_heads, groups, q, m]``."""
    query_positions, key_positions = context.query_positions, context.key_positions
    q_len = query_positions.shape[0]
    starts = list(range(0, q_len, chunk_size))
    firsts = query_positions[starts]
    lasts = query_positions[[min(start + chunk_size, q_len) - 1 for start in starts]]
    # Keys [0, folded) are before every query of the chunk; keys [folded, seen) are checked pair by pair.
    folded_ends = torch.searchsorted(key_positions, firsts, right=True).tolist()
    seen_ends = torch.searchsorted(key_positions, lasts, right=True).tolist()

    batch, kv_heads, _, features = key_features.shape
    state = key_features.new_zeros(batch, kv_heads, features, value.shape[-1])
    normalizer = key_features.new_zeros(batch, kv_heads, features)
    folded = 0
    outputs = []
    for start, folded_end, seen_end in zip(starts, folded_ends, seen_ends, strict=True):
        new_keys, new_values = key_features[:, :, folded:folded_end], value[:, :, folded:folded_end]
        state = state + torch.einsum("bhkm,bhkd->bhmd", new_keys, new_values)
        normalizer = normalizer + new_keys.sum(-2)
        folded = folded_end

        chunk = query_features[:, :, :, start : start + chunk_size]
        numerator = torch.einsum("bhgqm,bhmd->bhgqd", chunk, state)
        denominator = torch.einsum("bhgqm,bhm->bhgq", chunk, normalizer)
        if seen_end > folded_end:
            near_keys = key_features[:, :, folded_end:seen_end]
            visible = key_positions[None, folded_end:seen_end] <= query_positions[start : start + chunk_size, None]
            weights = torch.einsum("bhgqm,bhkm->bhgqk", chunk, near_keys) * visible.to(chunk.dtype)
            numerator = numerator + torch.einsum("bhgqk,bhkd->bhgqd", weights, value[:, :, folded_end:seen_end])
            denominator = denominator + weights.sum(-1)
        outputs.append(_normalize(numerator, denominator))
    return torch.cat(outputs, dim=-2)


def _normalize(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` per row, zeros where a row saw no key (denominator 0)."""
    denominator = denominator.unsqueeze(-1)
    return numerator / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
