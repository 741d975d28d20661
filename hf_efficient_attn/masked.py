"""Exact softmax attention under a mask rule, in chunks of queries: the chunked engine of mask variants.

Every mask-based variant (`full`, `flash`, `sliding`, `sparse`) is the same computation, softmax attention
over the keys its rule allows, so they share this one engine and differ only in a `MaskRule`. The engine
walks the queries in chunks; for each chunk the rule names the ranges of positions that can matter
(`candidate_ranges`), and only those keys are gathered, so memory and work are O(chunk × candidates)
instead of N×N: a sliding window of W keys costs O(N·W), never a dense mask. Each chunk is one call of
torch's SDPA with a boolean mask over its candidates (softmax in float32 or float64 inside SDPA), rows that
see no key give zeros, never NaN, with zero gradients; so does a chunk without candidate keys, and a call
without keys. GQA is handled by folding each key/value head's query heads into one SDPA call, without
repeating keys and values.

Chunks and candidate ranges are host integers computed from shapes and host facts of the context, never
from tensor values, so the engine traces under ``torch.compile(fullgraph=True)``. Calls whose positions
exist on the device only (static caches) take every key as a candidate.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from . import fused_path, sdpa_support
from .context import AttentionContext

CHUNK_ELEMENTS = 1 << 24
"""Budget of mask elements per chunk (batch × heads × chunk queries × candidate keys)."""

PositionRanges = list[tuple[int, int]]
"""Half-open ranges ``[low, high)`` of absolute positions."""


class MaskRule(Protocol):
    """A variant's attention pattern over absolute positions, on top of causality and padding."""

    def allowed(
        self, context: AttentionContext, query_positions: torch.Tensor, key_positions: torch.Tensor
    ) -> torch.Tensor | None:
        """Bool ``[batch|1, heads|1, q, k]``: which pairs the pattern keeps (None: all)."""

    def candidate_ranges(self, context: AttentionContext, first: int, last: int) -> PositionRanges | None:
        """Position ranges that queries at positions ``first..last`` may see, in ascending order (None:
        all); a superset is fine."""

    def ranges_exact(self, context: AttentionContext) -> bool:
        """Whether, for one causal query, `candidate_ranges` names exactly the keys the pattern lets it see
        (None: every earlier key): then its chunk needs no mask of the pattern or of causality."""


def masked_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    rule: MaskRule | None = None,
    chunk_size: int | None = None,
    decode_kernel: bool = False,
) -> torch.Tensor:
    """Softmax attention restricted by causality, padding, documents, a caller's mask and ``rule``.

    Args:
        query: ``[batch, q_heads, q_len, head_dim]``.
        key, value: ``[batch, kv_heads, k_len, head_dim]`` with ``q_heads % kv_heads == 0``.
        context: positions, padding and flags of this call.
        rule: the variant's pattern, or None for plain (causal or bidirectional) attention.
        chunk_size: queries per chunk; by default sized to keep each chunk's mask near
            `CHUNK_ELEMENTS` elements.
        decode_kernel: let a chunk of one query under a mask shared by the heads run on the split-key
            decode kernel with that mask over its keys (`fused_path.decode_under_key_mask`), where SDPA
            under a mask is slow (CUDA); the result is the same to rounding.

    Returns:
        ``[batch, q_heads, q_len, head_dim]`` in the query's dtype.
    """
    batch, q_heads, q_len, head_dim = query.shape
    k_len = key.shape[-2]
    if chunk_size is None:
        per_query = max(1, batch * q_heads * k_len)
        chunk_size = max(16, min(q_len, CHUNK_ELEMENTS // per_query))
    chunk_size = max(1, min(chunk_size, max(q_len, 1)))
    outputs = []
    for start in range(0, q_len, chunk_size):
        chunk_query = query[..., start : min(start + chunk_size, q_len), :]
        chunk = _plan_chunk(chunk_query, key, context, rule, start, start + chunk_query.shape[-2])
        outputs.append(_run_chunk(chunk, chunk_query, key, value, context, decode_kernel))
    if not outputs:
        return _no_keys(query, key, value)
    return torch.cat(outputs, dim=-2) if len(outputs) > 1 else outputs[0]


@dataclass(frozen=True)
class _ChunkPlan:
    """What one chunk's attention reads besides the query, key and value: the key index ranges it gathers
    (None: every key; empty: none), the mask over them and whether SDPA fuses the masked call."""

    key_index: list[tuple[int, int]] | None
    visible: torch.Tensor | None
    fused: bool


def _plan_chunk(
    query: torch.Tensor, key: torch.Tensor, context: AttentionContext, rule: MaskRule | None, start: int, stop: int
) -> _ChunkPlan:
    """The candidate keys and the mask of the queries ``start:stop`` (host facts and device masks from the
    context; nothing of the query, key or value but their shapes)."""
    query_positions = context.query_positions[start:stop]
    key_index = _candidate_indices(context, rule, start, stop, key.shape[-2])
    if key_index is not None and not key_index:
        return _ChunkPlan(key_index, None, False)
    key_positions = context.key_positions if key_index is None else _gather(context.key_positions, key_index)
    in_ranges = (  # one causal query whose gathered keys are exactly the ones it sees (no static slots ahead)
        context.causal and not context.static and stop - start == 1 and rule is not None and rule.ranges_exact(context)
    )
    visible = _visible(context, None if in_ranges else rule, query_positions, key_positions, key_index, start, stop,
                       causal=context.causal and not in_ranges)
    fused = visible is not None and sdpa_support.fuses_masked_call(query, key, visible, context.dropout)
    return _ChunkPlan(key_index, visible, fused)


def _run_chunk(
    chunk: _ChunkPlan,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    decode_kernel: bool = False,
) -> torch.Tensor:
    """Attention of the chunk's queries (``query`` holds just those) over its candidate keys."""
    if chunk.key_index is not None:
        if not chunk.key_index:
            return _no_keys(query, key, value)
        key, value = _gather(key, chunk.key_index, axis=-2), _gather(value, chunk.key_index, axis=-2)
    if decode_kernel and chunk.visible is not None and not chunk.fused:
        output = fused_path.decode_under_key_mask(query, key, value, chunk.visible, context)
        if output is not None:
            return output
    return _sdpa_chunk(query, key, value, chunk.visible, context, chunk.fused)


def plan_one_masked_call(
    query: torch.Tensor, key: torch.Tensor, context: AttentionContext, rule: MaskRule | None = None
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """`masked_attention` of every query of the call in one chunk, as ``(query, key, value) -> output``
    with the candidate keys and the mask made now, once: the forward's later layers (`replay`) then pay
    one SDPA call each (and the gathers of the candidates, where they are not every key)."""
    if query.shape[-2] == 0:
        return _no_keys
    chunk = _plan_chunk(query, key, context, rule, 0, query.shape[-2])
    return functools.partial(_run_chunk, chunk, context=context)


def _no_keys(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Zero rows for queries without any candidate key, kept in the graph of all three inputs, so that
    their gradients are zero, not absent."""
    batch, q_heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, (q_heads // kv_heads) * q_len, head_dim)
    empty_key, empty_value = key[..., :0, :], value[..., :0, :]
    output = (grouped @ empty_key.transpose(-1, -2)) @ empty_value
    return output.reshape(batch, q_heads, q_len, value.shape[-1])


def _gather(x: torch.Tensor, ranges: list[tuple[int, int]], axis: int = -1) -> torch.Tensor:
    """The slices ``ranges`` of x along ``axis``, joined."""
    parts = [x.narrow(axis, low, high - low) for low, high in ranges]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=axis)


def _candidate_indices(
    context: AttentionContext, rule: MaskRule | None, start: int, stop: int, k_len: int
) -> list[tuple[int, int]] | None:
    """Key index ranges worth gathering for queries ``start:stop`` (None: every key), from host facts.

    Key ``i`` holds position ``i`` unless a bounded cache trimmed the middle: then its first
    ``trimmed_prefix`` keys are positions ``0..prefix - 1`` and the rest a contiguous tail ending at the
    newest token.
    """
    if context.query_offset is None:
        return None
    first, last = context.query_offset + start, context.query_offset + stop - 1
    ranges = rule.candidate_ranges(context, first, last) if rule is not None else None
    if context.causal:
        ranges = [(0, last + 1)] if ranges is None else [(low, min(high, last + 1)) for low, high in ranges]
    if ranges is None:
        return None
    prefix = context.trimmed_prefix
    tail_offset = 0  # position of key index i in the tail is i + tail_offset
    if prefix is not None:
        tokens = context.query_offset + context.query_positions.shape[0]
        tail_offset = tokens - k_len
    if prefix is None:
        pieces = [(max(low, 0), min(high, k_len)) for low, high in ranges]
    else:  # the kept prefix's keys first, then the tail's: ascending
        pieces = [(max(low, 0), min(high, prefix)) for low, high in ranges]
        pieces += [(max(low - tail_offset, prefix), min(high - tail_offset, k_len)) for low, high in ranges]
    merged = _merge([piece for piece in pieces if piece[1] > piece[0]])
    if merged == [(0, k_len)]:
        return None
    return merged


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping ranges joined; the input is in ascending order of ``low`` (rules and the prefix/tail
    split produce them so, and sizes may be symbolic under torch.compile, which cannot sort them)."""
    merged: list[tuple[int, int]] = []
    for low, high in ranges:
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _visible(
    context: AttentionContext,
    rule: MaskRule | None,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    key_index: list[tuple[int, int]] | None,
    start: int,
    stop: int,
    causal: bool,
) -> torch.Tensor | None:
    """Bool mask ``[b|1, heads|1, q, k]`` of pairs that may attend, or None when all may; ``rule`` None and
    ``causal`` False where the gathered keys already obey them."""
    masks: list[torch.Tensor] = []  # each [b|1, heads|1, q, k]
    if causal:
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
        padding = context.key_padding if key_index is None else _gather(context.key_padding, key_index)
        masks.append(padding[:, None, None, :])
    if context.key_documents is not None:
        key_documents = context.key_documents if key_index is None else _gather(context.key_documents, key_index)
        query_documents = context.query_documents[:, start:stop]
        masks.append((query_documents[:, :, None] == key_documents[:, None, :])[:, None])
    if context.dense_mask is not None:
        dense = context.dense_mask[..., start:stop, :]
        if key_index is not None:
            dense = _gather(dense, key_index)
        masks.append(dense)
    if not masks:
        return None
    visible = masks[0]
    for mask in masks[1:]:
        visible = visible & mask
    return visible


def _sdpa_chunk(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    visible: torch.Tensor | None,
    context: AttentionContext,
    fused_under_mask: bool = False,
) -> torch.Tensor:
    """One SDPA call for a chunk: the key/value heads as they are where SDPA fuses the masked grouped call
    (``fused_under_mask``, `sdpa_support.fuses_masked_call`, asked once by the caller), else the query
    heads of each key/value head folded into its query axis (`fold_one_masked_query` says where one
    query under a mask repeats the keys instead)."""
    batch, q_heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    groups = q_heads // kv_heads
    if groups > 1 and visible is not None and fused_under_mask:
        output = F.scaled_dot_product_attention(query, key, value, attn_mask=visible, dropout_p=context.dropout,
                                                scale=context.scaling, enable_gqa=True)
        return sdpa_support.zero_rows_without_keys(output, visible)
    if groups > 1 and visible is not None and not fold_one_masked_query(query):
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        kv_heads, groups = q_heads, 1
    grouped = query.reshape(batch, kv_heads, groups * q_len, head_dim)
    mask = None if visible is None else _group_mask(visible, kv_heads, groups)
    output = F.scaled_dot_product_attention(
        grouped, key, value, attn_mask=mask, dropout_p=context.dropout, scale=context.scaling
    )
    if mask is not None:
        output = sdpa_support.zero_rows_without_keys(output, mask)
    return output.reshape(batch, q_heads, q_len, head_dim)


def fold_one_masked_query(query: torch.Tensor) -> bool:
    """Whether a query chunk under a mask folds its heads into their key/value head's query axis, where
    SDPA has no fused kernel for the grouped heads under the mask (`sdpa_support`).

    Always, except one decoding query on CUDA: folded, its group becomes a few queries under a mask, for
    which SDPA (cuDNN, torch 2.11 on the H200) picks a kernel made for many queries, 80-126 us per layer
    at 4k keys of Llama-1B shapes against 11 us per head unfolded, as transformers calls it (the keys
    repeated per query head)."""
    return query.shape[-2] != 1 or not query.is_cuda


def _group_mask(mask: torch.Tensor, kv_heads: int, groups: int) -> torch.Tensor:
    """``[b|1, heads|1, q, k]`` → ``[b|1, kv_heads|1, groups * q, k]``, matching the folded queries."""
    rows, heads, q_len, k_len = mask.shape
    if heads == 1:
        return mask.expand(rows, 1, q_len, k_len).repeat(1, 1, groups, 1) if groups > 1 else mask
    return mask.reshape(rows, kv_heads, groups * q_len, k_len)


__all__ = ["CHUNK_ELEMENTS", "MaskRule", "PositionRanges", "masked_attention", "plan_one_masked_call"]
