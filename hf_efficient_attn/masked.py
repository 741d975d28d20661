"""Exact softmax attention under a mask rule, in chunks of queries: the reference path of mask variants.

Every mask-based variant (`full`, `sliding`, `sparse`) is the same computation, softmax attention over
the keys its rule allows, so they share this one engine and differ only in a `MaskRule`. The engine
walks the queries in chunks; for each chunk the rule names the few keys that can matter
(`candidate_keys`), and only those are gathered, so memory is O(chunk × candidates) instead of N×N:
a sliding window of W keys costs O(N·W), never a dense mask. Softmax runs in float32 (float64 stays
float64) and rows that see no key give zeros, never NaN, with zero gradients; so does a chunk whose
rule names no candidate key, and a call without keys. GQA is handled by grouping query heads over
their shared key/value head, without repeating keys and values.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from .context import AttentionContext

CHUNK_ELEMENTS = 1 << 24
"""Budget of score elements per chunk (batch × heads × chunk queries × candidate keys)."""


class MaskRule(Protocol):
    """A variant's attention pattern over absolute positions, on top of causality and padding."""

    def allowed(
        self, context: AttentionContext, query_positions: torch.Tensor, key_positions: torch.Tensor
    ) -> torch.Tensor | None:
        """Bool ``[batch|1, heads|1, q, k]``: which pairs the pattern keeps (None: all)."""

    def candidate_keys(
        self, context: AttentionContext, query_positions: torch.Tensor, key_positions: torch.Tensor
    ) -> torch.Tensor | None:
        """Bool ``[k]``: keys that any query of this chunk may see (None: all); a superset is fine."""


def masked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    rule: MaskRule | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Softmax attention restricted by causality, padding, documents, a caller's mask and ``rule``.

    Args:
        query: ``[batch, q_heads, q_len, head_dim]``.
        key, value: ``[batch, kv_heads, k_len, head_dim]`` with ``q_heads % kv_heads == 0``.
        context: positions, padding and flags of this call.
        rule: the variant's pattern, or None for plain (causal or bidirectional) attention.
        chunk_size: queries per chunk; by default sized to keep each chunk's scores near
            `CHUNK_ELEMENTS` elements.

    Returns:
        ``[batch, q_heads, q_len, head_dim]`` in the query's dtype.
    """
    batch, q_heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    groups = q_heads // kv_heads
    compute_dtype = torch.promote_types(query.dtype, torch.float32)
    grouped_query = query.reshape(batch, kv_heads, groups, q_len, head_dim)

    if chunk_size is None:
        per_query = max(1, batch * q_heads * key.shape[-2])
        chunk_size = max(16, min(q_len, CHUNK_ELEMENTS // per_query))
    outputs = []
    for start in range(0, q_len, chunk_size):
        stop = min(start + chunk_size, q_len)
        outputs.append(
            _attend_chunk(grouped_query[..., start:stop, :], key, value, context, rule, start, stop, compute_dtype)
        )
    output = torch.cat(outputs, dim=-2) if len(outputs) > 1 else outputs[0]
    return output.reshape(batch, q_heads, q_len, head_dim).to(query.dtype)


def _attend_chunk(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    rule: MaskRule | None,
    start: int,
    stop: int,
    compute_dtype: torch.dtype,
) -> torch.Tensor:
    """Attention of queries ``start:stop`` (grouped ``[b, kv_heads, groups, q, d]``) over their candidates."""
    query_positions = context.query_positions[start:stop]
    candidates = _candidates(context, rule, query_positions)
    if candidates is None:
        key_index = None
        chunk_keys, chunk_values, key_positions = key, value, context.key_positions
    else:
        key_index = candidates.nonzero().squeeze(-1)
        chunk_keys = key.index_select(-2, key_index)
        chunk_values = value.index_select(-2, key_index)
        key_positions = context.key_positions.index_select(0, key_index)

    scores = torch.einsum(
        "bhgqd,bhkd->bhgqk", query.to(compute_dtype), chunk_keys.to(compute_dtype)
    ) * context.scaling
    visible = _visible(context, rule, query_positions, key_positions, key_index, start, stop)
    if visible is not None:
        visible = _group_heads(visible, kv_heads=query.shape[1], groups=query.shape[2])
    if visible is not None:
        scores = scores.masked_fill(~visible, float("-inf"))

    probabilities = _softmax_or_zeros(scores)
    if context.dropout > 0:
        probabilities = F.dropout(probabilities, p=context.dropout, training=True)
    return torch.einsum("bhgqk,bhkd->bhgqd", probabilities, chunk_values.to(compute_dtype))


def _softmax_or_zeros(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension; rows with no finite score, or no key at all, weigh nothing.

    A chunk whose rule names no candidate key has an empty key dimension, where a row maximum does
    not exist: its (empty) scores are then the probabilities, and multiplying them by the empty
    values gives zero rows while keeping the query in the graph, so its gradient is zero, not absent.
    """
    if scores.shape[-1] == 0:
        return scores
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)
    normalizer = weights.sum(dim=-1, keepdim=True)
    return weights / torch.where(normalizer > 0, normalizer, torch.ones_like(normalizer))


def _candidates(
    context: AttentionContext, rule: MaskRule | None, query_positions: torch.Tensor
) -> torch.Tensor | None:
    """Keys worth gathering for a chunk: those the rule may allow and causality does not exclude."""
    candidates = None
    if rule is not None:
        candidates = rule.candidate_keys(context, query_positions, context.key_positions)
    if context.causal:
        not_future = context.key_positions <= query_positions.max()
        candidates = not_future if candidates is None else candidates & not_future
    if candidates is not None and bool(candidates.all()):
        return None
    return candidates


def _visible(
    context: AttentionContext,
    rule: MaskRule | None,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_index: torch.Tensor | None,
    start: int,
    stop: int,
) -> torch.Tensor | None:
    """Bool mask ``[b|1, heads|1, q, k]`` of pairs that may attend, or None when all may."""
    masks: list[torch.Tensor] = []  # each [b|1, heads|1, q, k]
    if context.causal:
        masks.append((key_positions[None, :] <= query_positions[:, None])[None, None])
    if context.native_window is not None:
        distance = query_positions[:, None] - key_positions[None, :]
        reach = context.native_window
        near = distance < reach if context.causal else distance.abs() < reach
        masks.append(near[None, None])
    if rule is not None:
        pattern = rule.allowed(context, query_positions, key_positions)
        if pattern is not None:
            masks.append(pattern)
    if context.key_padding is not None:
        padding = context.key_padding if key_index is None else context.key_padding.index_select(1, key_index)
        masks.append(padding[:, None, None, :])
    if context.key_documents is not None:
        key_documents = (
            context.key_documents if key_index is None else context.key_documents.index_select(1, key_index)
        )
        query_documents = context.query_documents[:, start:stop]
        masks.append((query_documents[:, :, None] == key_documents[:, None, :])[:, None])
    if context.dense_mask is not None:
        dense = context.dense_mask[..., start:stop, :]
        if key_index is not None:
            dense = dense.index_select(-1, key_index)
        masks.append(dense)
    if not masks:
        return None
    visible = masks[0]
    for mask in masks[1:]:
        visible = visible & mask
    return visible


def _group_heads(mask: torch.Tensor, kv_heads: int, groups: int) -> torch.Tensor:
    """``[b, heads|1, q, k]`` → ``[b, kv_heads|1, groups|1, q, k]`` matching grouped queries."""
    if mask.shape[1] == 1:
        return mask.unsqueeze(2)
    return mask.reshape(mask.shape[0], kv_heads, groups, mask.shape[-2], mask.shape[-1])


__all__ = ["MaskRule", "masked_attention", "CHUNK_ELEMENTS"]
