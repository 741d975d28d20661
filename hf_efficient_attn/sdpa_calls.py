"""Exact attention on torch's SDPA, for the calls the rule (`dispatch`) sends there: a call whose pattern
restricts nothing SDPA cannot state without a dense mask, with only the mask the call itself needs
(causality by position, padding, a caller's mask), and grouped-query heads passed as they are wherever
SDPA has a kernel for them. A call that needs no mask is planned as one SDPA call with its arguments
bound, so a forward's later layers (`replay`) skip the mask logic."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import fused_path, sdpa_support
from .context import AttentionContext


def sdpa_plan(
    query: torch.Tensor, key: torch.Tensor, context: AttentionContext, decode_kernel: bool
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """`sdpa_attention` for this call's shapes and context. Where the call needs no mask (a prompt under
    plain causality, a decoding step over the keys it sees) it is one SDPA call with its arguments bound,
    so that the later layers of a forward (`replay`) skip the mask logic: at batch-1 decoding the host
    time of each layer's call is what the GPU waits on."""
    if sdpa_needs_mask(query, key, context):
        return functools.partial(sdpa_attention, context=context, decode_kernel=decode_kernel)
    grouped = {"enable_gqa": True} if query.shape[1] != key.shape[1] else {}
    causal_rows, _ = _causality(query, key, context)
    return functools.partial(
        F.scaled_dot_product_attention, dropout_p=context.dropout, scale=context.scaling, is_causal=causal_rows,
        **grouped
    )


def sdpa_needs_mask(query: torch.Tensor, key: torch.Tensor, context: AttentionContext) -> bool:
    """Whether a call the pattern covers needs a mask on SDPA (`sdpa_attention`): padding, a caller's
    mask, or causality that ``is_causal`` cannot state (queries not aligned with the keys, a static
    cache's slots); without one it is plain causal or bidirectional attention."""
    causal_rows, aligned = _causality(query, key, context)
    return (causal_rows and not aligned) or context.key_padding is not None or context.dense_mask is not None


def _causality(query: torch.Tensor, key: torch.Tensor, context: AttentionContext) -> tuple[bool, bool]:
    """Whether causality restricts the call (several queries, or a static cache's slots ahead of the
    newest token), and whether ``is_causal`` states it (queries and keys aligned, every key a position
    of this sequence)."""
    q_len, k_len = query.shape[-2], key.shape[-2]
    causal_rows = context.causal and (q_len > 1 or context.static)
    aligned = q_len == k_len and context.trimmed_prefix is None and not context.static
    return causal_rows, aligned


def sdpa_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    decode_kernel: bool = False,
) -> torch.Tensor:
    """Exact attention of a call whose pattern restricts nothing (`capabilities.pattern_needs`), on torch's SDPA.

    The mask SDPA gets is only what the call needs: none (``is_causal`` when queries and keys are
    aligned, nothing for one query), causality by position for a few queries against a cache and for a
    static cache's calls (whose slots ahead of the newest token are unwritten; positions live on the
    device, so this is the one mask that works for every step, as transformers' own static path does),
    the key padding, a caller's 4-D mask. Rows that padding or a caller's mask leave without any key
    return zeros. GQA: SDPA's own grouping without a mask, and under a mask where SDPA has a fused
    kernel for that (`sdpa_support.fuses_masked_call`); otherwise one decoding query folded into its
    key/value head on the CPU, repeated keys on CUDA. With ``decode_kernel``, one decoding query under a
    mask that no fused SDPA kernel takes (a static cache's step) runs on the split-key decode kernel
    instead (`fused_path.decode_under_key_mask`), which SDPA's remaining masked kernels are far slower than.
    """
    q_len, k_len = query.shape[-2], key.shape[-2]
    mask = None
    is_causal = False
    causal_rows, aligned = _causality(query, key, context)
    if causal_rows and aligned:
        is_causal = True
    elif causal_rows:
        mask = (context.key_positions[None, :] <= context.query_positions[:, None])[None, None]
    may_leave_rows_empty = False
    for extra in (
        None if context.key_padding is None else context.key_padding[:, None, None, :],
        context.dense_mask,
    ):
        if extra is None:
            continue
        if is_causal:
            mask, is_causal = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril()[None, None], False
        mask = extra if mask is None else mask & extra
        may_leave_rows_empty = True  # causality alone never does: each query sees its own key
    fused = mask is not None and sdpa_support.fuses_masked_call(query, key, mask, context.dropout)
    if decode_kernel and mask is not None and not fused:
        output = fused_path.decode_under_key_mask(query, key, value, mask, context)
        if output is not None:
            return output
    output = sdpa_grouped(query, key, value, mask, is_causal, context.scaling, context.dropout, fused)
    if may_leave_rows_empty:
        output = sdpa_support.zero_rows_without_keys(output, mask)
    return output


def sdpa_grouped(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
    dropout: float,
    fused_under_mask: bool = False,
) -> torch.Tensor:
    """SDPA with GQA handled without copying keys where SDPA allows it: without a mask, and under one
    where ``fused_under_mask`` (`sdpa_support.fuses_masked_call`, asked once by the caller)."""
    batch, q_heads, q_len, head_dim = query.shape
    groups = q_heads // key.shape[1]
    if groups == 1:
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale, is_causal=is_causal
        )
    if mask is None or fused_under_mask:
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale, is_causal=is_causal, enable_gqa=True
        )
    if q_len == 1 and mask.shape[1] == 1 and not query.is_cuda:
        # one query: its group's heads become the queries of their key/value head (not on CUDA, where
        # SDPA under a mask then picks a kernel made for many queries: `masked.fold_one_masked_query`)
        folded = query.reshape(batch, q_heads // groups, groups, head_dim)
        output = F.scaled_dot_product_attention(folded, key, value, attn_mask=mask, dropout_p=dropout, scale=scale)
        return output.reshape(batch, q_heads, 1, head_dim)
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scale)
