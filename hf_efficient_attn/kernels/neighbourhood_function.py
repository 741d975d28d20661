"""Autograd glue and input checks: `neighbourhood_attention` over the 2-D neighbourhood kernels."""

from __future__ import annotations

import torch

from ..grad_mode import records_grad
from . import neighbourhood
from .checks import KernelInputError, _common_reason, scale_reason
from .neighbourhood import GridMask
from .strides import dense_inputs

MAX_HEAD_DIM = 256
"""The largest head dim the kernels take; smaller ones are padded with masked lanes to a power of two."""


def _tensor_reason(q, k, v) -> str | None:
    """The dense kernels' input checks (head dims up to `MAX_HEAD_DIM`), and self-attention over one grid."""
    reason = _common_reason(q, k, v, dense=True, max_head_dim=MAX_HEAD_DIM)
    if reason is None and not q.shape[2] == k.shape[2] == v.shape[2]:
        return (f"q, k, v must hold the same tokens (self-attention over the grid), got {q.shape[2]}, "
                f"{k.shape[2]}, {v.shape[2]}")
    return reason


def _count(name: str, value, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise KernelInputError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_neighbourhood(q, k, v, *, scale, grid, reach, prefix_tokens, leading_keys, global_queries) -> GridMask:
    """Raise `KernelInputError` on inputs the kernels cannot take; else the pattern in kernel form."""
    reason = _tensor_reason(q, k, v) or scale_reason(scale)
    if reason:
        raise KernelInputError(reason)
    if not (isinstance(grid, tuple | list) and len(grid) == 2):
        raise KernelInputError(f"grid must be a (rows, cols) pair of ints >= 1, got {grid!r}")
    rows, cols = _count("grid rows", grid[0], 1), _count("grid cols", grid[1], 1)
    reach = _count("reach", reach)
    prefix = _count("prefix_tokens", prefix_tokens)
    n = q.shape[2]
    if n != prefix + rows * cols:
        raise KernelInputError(
            f"the sequence has {n} tokens but prefix_tokens + rows * cols = {prefix} + {rows} * {cols} = "
            f"{prefix + rows * cols}; pass the grid and prefix of these tokens")
    for name, value, why in (("leading_keys", leading_keys, "are seen by every query"),
                             ("global_queries", global_queries, "see every key")):
        _count(name, value)
        if not prefix <= value <= n:
            raise KernelInputError(f"{name}={value} must be between prefix_tokens={prefix} (the tokens before the "
                                   f"grid always {why}) and the sequence length {n}")
    return GridMask(prefix=prefix, rows=rows, cols=cols, reach=reach, leading=leading_keys,
                    global_queries=global_queries)


class _NeighbourhoodAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, mask):
        o, lse = neighbourhood.neighbourhood_forward(q, k, v, scale, mask)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale, ctx.mask = scale, mask
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = neighbourhood.neighbourhood_backward(do, q, k, v, o, lse, ctx.scale, ctx.mask)
        return dq, dk, dv, None, None


def neighbourhood_launch(q, k, v, *, scale, grid, reach, prefix_tokens, leading_keys=None, global_queries=None):
    """Checked inputs (dense in memory) and the pattern in kernel form, or None when the call has no token or
    no batch row (its output is all zeros). ``leading_keys`` and ``global_queries`` default to
    ``prefix_tokens``."""
    leading_keys = prefix_tokens if leading_keys is None else leading_keys
    global_queries = prefix_tokens if global_queries is None else global_queries
    mask = check_neighbourhood(q, k, v, scale=scale, grid=grid, reach=reach, prefix_tokens=prefix_tokens,
                               leading_keys=leading_keys, global_queries=global_queries)
    if q.shape[0] == 0 or q.shape[1] == 0:
        return None
    return dense_inputs(q), dense_inputs(k), dense_inputs(v), mask


def attend(q, k, v, scale: float, mask: GridMask) -> torch.Tensor:
    """Through autograd when a gradient may be asked for, else straight to the forward kernel."""
    if records_grad(q, k, v):
        return _NeighbourhoodAttention.apply(q, k, v, float(scale), mask)
    return neighbourhood.neighbourhood_forward(q, k, v, scale, mask)[0]


def neighbourhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    grid: tuple[int, int],
    reach: int,
    prefix_tokens: int = 0,
    leading_keys: int | None = None,
    global_queries: int | None = None,
) -> torch.Tensor:
    """2-D neighbourhood attention over a patch grid. q [B, Hq, N, D]; k, v [B, Hkv, N, D], Hq % Hkv == 0, with
    N = prefix_tokens + rows * cols: ``prefix_tokens`` tokens (a CLS), then the ``grid`` = (rows, cols) patches
    in raster order (token prefix_tokens + r * cols + c is cell (r, c)).

    Query i sees key j iff i < global_queries, or j < leading_keys, or both are cells at most ``reach`` rows
    and ``reach`` columns apart. ``leading_keys`` and ``global_queries`` are at least ``prefix_tokens``
    (their default). ``reach`` = window - 1 in `SlidingOptions` terms. Returns [B, Hq, N, D] in q's dtype.
    """
    prepared = neighbourhood_launch(q, k, v, scale=scale, grid=grid, reach=reach, prefix_tokens=prefix_tokens,
                                    leading_keys=leading_keys, global_queries=global_queries)
    if prepared is None:
        return torch.zeros_like(q)
    q, k, v, mask = prepared
    return attend(q, k, v, scale, mask)
