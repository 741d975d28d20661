"""Independent float64 specifications: dense masks from the variants' definitions, and softmax attention."""

from __future__ import annotations

import torch


def dense_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, visible: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Softmax attention in float64 with an explicit bool mask ``[b|1, h|1, q, k]``.

    Rows with no visible key give 0, with zero gradients (they are softmaxed as zeros, then dropped).
    """
    groups = query.shape[1] // key.shape[1]
    key = key.double().repeat_interleave(groups, dim=1)
    value = value.double().repeat_interleave(groups, dim=1)
    scores = query.double() @ key.transpose(-1, -2) * scaling
    scores = scores.masked_fill(~visible, float("-inf"))
    any_visible = visible.any(-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(~any_visible, 0.0), dim=-1) * any_visible
    return weights @ value


def sliding_mask(
    query_positions: list[int] | torch.Tensor,
    key_positions: list[int] | torch.Tensor,
    *,
    window: int,
    causal: bool,
    sinks: int = 0,
    global_tokens: int = 0,
    starts: list[int] | None = None,
    key_padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """The sliding-window definition, pair by pair (slow on purpose): bool ``[b, 1, q, k]``."""
    query_positions = [int(p) for p in query_positions]
    key_positions = [int(p) for p in key_positions]
    starts = starts or [0]
    mask = torch.zeros(len(starts), 1, len(query_positions), len(key_positions), dtype=torch.bool)
    for row, start in enumerate(starts):
        for i, q in enumerate(query_positions):
            for j, k in enumerate(key_positions):
                if causal and k > q:
                    continue
                if key_padding is not None and not key_padding[row, j]:
                    continue
                near = (q - k < window) if causal else abs(q - k) < window
                sink = 0 <= k - start < sinks
                is_global = 0 <= k - start < global_tokens or 0 <= q - start < global_tokens
                mask[row, 0, i, j] = near or sink or is_global
    return mask


def grid_mask(length: int, grid: tuple[int, int], prefix: int, window: int) -> torch.Tensor:
    """2-D neighbourhood over a patch grid with ``prefix`` global tokens before it: bool ``[1, 1, n, n]``."""
    columns = grid[1]
    mask = torch.zeros(1, 1, length, length, dtype=torch.bool)
    for q in range(length):
        for k in range(length):
            if q < prefix or k < prefix:
                mask[0, 0, q, k] = True
                continue
            qr, qc = divmod(q - prefix, columns)
            kr, kc = divmod(k - prefix, columns)
            mask[0, 0, q, k] = abs(qr - kr) < window and abs(qc - kc) < window
    return mask
