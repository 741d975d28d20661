"""What every library backend asks of its operands before its own limits: the shared checks of `supports`."""

from __future__ import annotations

import torch

DTYPES = (torch.float16, torch.bfloat16)
"""The dtypes the library backends take."""


def operand_refusal(query: object, key: object, value: object, library: str) -> str | None:
    """None when query ``[batch, q_heads, q_len, d]`` and key and value ``[batch, kv_heads, k_len, d]`` are
    4-D tensors of one batch, one head size and one float16 or bfloat16 dtype, with query heads a multiple
    of the key/value heads (grouped-query attention); else what is wrong, naming ``library``."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            return f"{name} must be a 4-D tensor [batch, heads, len, head_dim], got {shape}"
    batch, q_heads, _, head_dim = query.shape
    _, kv_heads, k_len, _ = key.shape
    if key.shape[0] != batch or value.shape[0] != batch:
        return f"batch sizes differ: query {batch}, key {key.shape[0]}, value {value.shape[0]}"
    if value.shape[1] != kv_heads or value.shape[2] != k_len:
        return f"key {tuple(key.shape)} and value {tuple(value.shape)} differ in heads or length; they must match"
    if kv_heads == 0 or q_heads % kv_heads:
        return (f"query heads ({q_heads}) must be a multiple of key/value heads ({kv_heads}) for grouped-query "
                "attention")
    if query.dtype not in DTYPES:
        return f"query.dtype={query.dtype}: {library} runs float16 and bfloat16; cast to one of them"
    if key.dtype != query.dtype or value.dtype != query.dtype:
        return f"query, key, value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}"
    if key.shape[-1] != head_dim or value.shape[-1] != head_dim:
        return f"head dims differ: query {head_dim}, key {key.shape[-1]}, value {value.shape[-1]}"
    return None
