"""Our window convention (`fused_path.KernelMask`, the kernels' `_visible`), pair by pair in float64: the
spec the cuDNN backend's band mapping and its dispatch are checked against."""

from __future__ import annotations

import torch

INF = float("inf")


def our_mask(q_len, k_len, causal, left, right, key_lengths) -> torch.Tensor:
    """float64 ``[batch, q_len, k_len]``, 0 where our window (`fused_path.KernelMask`, the kernels' `_visible`)
    lets query i see key j and -inf elsewhere."""
    i = torch.arange(q_len, dtype=torch.float64)[:, None]
    j = torch.arange(k_len, dtype=torch.float64)[None, :]
    p = i + (k_len - q_len if causal else 0)
    seen = torch.ones(q_len, k_len, dtype=torch.bool)
    if causal:
        seen &= j <= p
    if left is not None:
        seen &= p - j < left
    if right is not None:
        seen &= j - p < right
    seen = seen[None] & (j[None] < key_lengths.to(torch.float64)[:, None, None])
    return torch.zeros(seen.shape, dtype=torch.float64).masked_fill(~seen, -INF)
