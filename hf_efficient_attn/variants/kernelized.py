"""Attention through positive feature maps, ``φ(q)·φ(k)`` in place of ``exp(q·k)``: the shared engine of
the linear families (`performer`, `linear`).

With features ``φ`` the output of query ``i`` is

    out_i = Σ_j φ(q_i)·φ(k_j) v_j / Σ_j φ(q_i)·φ(k_j)

over the keys ``j`` it may see. Bidirectional layers sum over every real key once: ``S = Σ φ(k_j) v_jᵀ``,
``z = Σ φ(k_j)``, so the cost is O(N·M·D) for M features. Causal layers need prefix sums; rather than
storing one ``M×D`` state per token, queries go in chunks of ``L``: keys before a chunk enter through
the sum of their ``φ(k) vᵀ`` (the chunk's state), and keys inside the chunk through a masked
``L×L`` quadratic term. When the queries are the newest keys (prefill, and a KV cache that appends
them) all chunks run at once: per-chunk sums, an exclusive cumulative sum over chunks, and one
batched quadratic term, a few batched products whatever N is. Other position layouts (a cache that
skipped positions) go chunk by chunk with a running state. Memory is O(N·M) plus one ``M×D`` state
per chunk. Causality is by absolute position (``key position <= query position``), so a KV cache
works. Padded keys contribute nothing, and rows that see no key give zeros.

Packed documents and 4-D caller masks cannot be expressed through prefix sums and are refused; the
model's own sliding window (Mistral's) is not applied, the family approximates full attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..context import AttentionContext
from .base import VariantError


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
    q_len, k_len = context.query_positions.shape[0], context.key_positions.shape[0]
    if q_len <= k_len and torch.equal(context.key_positions[k_len - q_len :], context.query_positions):
        return _causal_all_chunks(query_features, key_features, value, context.query_positions, chunk_size)
    return _causal_chunk_by_chunk(query_features, key_features, value, context, chunk_size)


def _causal_all_chunks(
    query_features: torch.Tensor,
    key_features: torch.Tensor,
    value: torch.Tensor,
    positions: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """Every chunk at once, when the last ``q`` keys are the queries themselves (same positions).

    Keys before those are before every query and form the starting state; the others are cut into
    the same chunks as the queries.
    """
    batch, kv_heads, groups, q_len, features = query_features.shape
    head_dim = value.shape[-1]
    prefix = key_features.shape[-2] - q_len
    first_state = torch.einsum("bhkm,bhkd->bhmd", key_features[:, :, :prefix], value[:, :, :prefix])
    first_normalizer = key_features[:, :, :prefix].sum(-2)

    chunks = -(-q_len // chunk_size)
    pad = chunks * chunk_size - q_len
    # Padding keys have zero features (they add nothing); padding queries are cut off at the end.
    queries = F.pad(query_features, (0, 0, 0, pad)).reshape(batch, kv_heads, groups, chunks, chunk_size, features)
    keys = F.pad(key_features[:, :, prefix:], (0, 0, 0, pad)).reshape(batch, kv_heads, chunks, chunk_size, features)
    values = F.pad(value[:, :, prefix:], (0, 0, 0, pad)).reshape(batch, kv_heads, chunks, chunk_size, head_dim)
    chunk_positions = F.pad(positions, (0, pad), value=int(positions[-1])).reshape(chunks, chunk_size)

    # State before chunk c: the starting state plus the sums of chunks 0..c-1.
    states = torch.einsum("bhclm,bhcld->bhcmd", keys, values).cumsum(2)
    states = torch.cat([first_state.unsqueeze(2), first_state.unsqueeze(2) + states[:, :, :-1]], dim=2)
    normalizers = keys.sum(-2).cumsum(2)
    normalizers = torch.cat([first_normalizer.unsqueeze(2), first_normalizer.unsqueeze(2) + normalizers[:, :, :-1]], dim=2)

    numerator = torch.einsum("bhgclm,bhcmd->bhgcld", queries, states)
    denominator = torch.einsum("bhgclm,bhcm->bhgcl", queries, normalizers)
    visible = chunk_positions[:, None, :] <= chunk_positions[:, :, None]
    weights = torch.einsum("bhgclm,bhcjm->bhgclj", queries, keys) * visible.to(queries.dtype)
    numerator = numerator + torch.einsum("bhgclj,bhcjd->bhgcld", weights, values)
    denominator = denominator + weights.sum(-1)
    output = _normalize(numerator, denominator)
    return output.reshape(batch, kv_heads, groups, chunks * chunk_size, head_dim)[..., :q_len, :]


def _causal_chunk_by_chunk(
    query_features: torch.Tensor,
    key_features: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    chunk_size: int,
) -> torch.Tensor:
    """A running state over query chunks, for any ascending positions (e.g. a cache with a gap)."""
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
