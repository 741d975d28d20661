"""Inputs for calling variants directly: random q/k/v, a hand-built context, and a layer description."""

from __future__ import annotations

import torch

from hf_efficient_attn.context import AttentionContext
from hf_efficient_attn.variants import LayerInfo, Role


def qkv(
    batch: int = 2,
    q_heads: int = 4,
    kv_heads: int = 2,
    q_len: int = 12,
    k_len: int | None = None,
    dim: int = 8,
    seed: int = 0,
    scale: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    k_len = q_len if k_len is None else k_len
    query = torch.randn(batch, q_heads, q_len, dim, generator=generator, dtype=torch.float64) * scale
    key = torch.randn(batch, kv_heads, k_len, dim, generator=generator, dtype=torch.float64) * scale
    value = torch.randn(batch, kv_heads, k_len, dim, generator=generator, dtype=torch.float64)
    return query.to(dtype), key.to(dtype), value.to(dtype)


def padding_mask(batch: int, length: int, side: str | None, gaps: list[int]) -> torch.Tensor | None:
    """Bool ``[batch, length]``, True for real tokens; row ``i`` has ``gaps[i]`` pad tokens on ``side``."""
    if side is None:
        return None
    mask = torch.ones(batch, length, dtype=torch.bool)
    for row, gap in enumerate(gaps[:batch]):
        if gap:
            if side == "left":
                mask[row, :gap] = False
            else:
                mask[row, length - gap :] = False
    return mask


def context(
    q_len: int,
    k_len: int,
    *,
    causal: bool,
    padding: torch.Tensor | None = None,
    scaling: float = 0.35,
    dropout: float = 0.0,
    key_positions: torch.Tensor | None = None,
) -> AttentionContext:
    """A context as the library builds one: causal queries are the last ``q_len`` of ``k_len`` tokens."""
    offset = k_len - q_len if causal else 0
    start = None
    if padding is not None:
        start = torch.where(padding.any(-1), padding.long().argmax(-1), padding.shape[-1])
        start = start if bool(start.any()) else None  # as build_context: None unless a row is left-padded
    return AttentionContext(
        query_positions=torch.arange(offset, offset + q_len),
        key_positions=torch.arange(k_len) if key_positions is None else key_positions,
        key_padding=padding,
        sequence_start=start,
        query_documents=None,
        key_documents=None,
        dense_mask=None,
        causal=causal,
        scaling=scaling,
        dropout=dropout,
        native_window=None,
        query_offset=offset,
    )


def layer(
    role: Role = Role.CAUSAL, heads: int = 4, kv_heads: int = 2, dim: int = 8, sequence_length: int | None = None
) -> LayerInfo:
    return LayerInfo(role, "test", 0, heads, kv_heads, dim, sequence_length=sequence_length)


def causal_padding_visible(
    query_positions: torch.Tensor, key_positions: torch.Tensor, causal: bool, padding: torch.Tensor | None
) -> torch.Tensor:
    """Bool ``[b|1, 1, q, k]``: causality and key padding only."""
    visible = torch.ones(len(query_positions), len(key_positions), dtype=torch.bool)
    if causal:
        visible = key_positions[None, :] <= query_positions[:, None]
    visible = visible[None, None]
    if padding is not None:
        visible = visible & padding[:, None, None, :]
    return visible


def naive_linear_attention(query_features, key_features, value, visible):
    """O(N²) definition: out_i = Σ_j [j visible] φq_i·φk_j v_j / Σ_j [j visible] φq_i·φk_j, zeros if none."""
    groups = query_features.shape[1] // key_features.shape[1]
    key_features = key_features.double().repeat_interleave(groups, 1)
    value = value.double().repeat_interleave(groups, 1)
    weights = (query_features.double() @ key_features.transpose(-1, -2)) * visible
    total = weights.sum(-1, keepdim=True)
    return torch.where(total > 0, (weights @ value) / total, torch.zeros(()).double())
