"""Autograd glue: `fused_attention` and `fused_attention_varlen` over the Triton kernels."""

from __future__ import annotations

import functools

import torch

from ..grad_mode import records_grad
from ..tensor_memo import TensorMemo
from . import flash
from .checks import check_dense, check_varlen
from .sparsity import TileLists, build_tile_lists
from .strides import dense_inputs

TILE_LISTS: TensorMemo[tuple[torch.Tensor, TileLists]] = TensorMemo()
"""Per block-layout tensor and mask: the int8 layout the kernels read and its tile lists."""


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale, mask, varlen, max_q, max_k):
        o, lse = flash.attention_forward(q, k, v, scale, mask, varlen, max_q, max_k)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale, ctx.mask, ctx.varlen, ctx.max_q, ctx.max_k = scale, mask, varlen, max_q, max_k
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash.attention_backward(do, q, k, v, o, lse, ctx.scale, ctx.mask, ctx.varlen, ctx.max_q,
                                              ctx.max_k)
        return dq, dk, dv, None, None, None, None, None


def fused_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    causal: bool,
    window: tuple[int | None, int | None] = (None, None),
    sink_tokens: int = 0,
    global_tokens: int = 0,
    block_layout: torch.Tensor | None = None,
    layout_block_size: int = 64,
    key_padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked attention. q [B, Hq, Nq, D]; k, v [B, Hkv, Nk, D] with Hq % Hkv == 0.

    Query i (at position qpos(i) = i + Nk - Nq when causal, else i) sees key j iff causal allows it,
    the key is not padding, the block layout allows (qpos // layout_block_size, j // layout_block_size),
    and the window clause holds: no window, or (left is None or qpos - j < left) and
    (right is None or j - qpos < right), or j < sink_tokens, or j < global_tokens, or
    qpos < global_tokens. Rows that see nothing return 0. Returns [B, Hq, Nq, D] in q's dtype.
    """
    prepared = dense_launch(q, k, v, scale=scale, causal=causal, window=window, sink_tokens=sink_tokens,
                            global_tokens=global_tokens, block_layout=block_layout,
                            layout_block_size=layout_block_size, key_padding=key_padding)
    if prepared is None:
        return torch.zeros_like(q)
    q, k, v, mask = prepared
    return _attend(q, k, v, float(scale), mask, False, q.shape[2], k.shape[2])


def dense_launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    causal: bool,
    window: tuple[int | None, int | None],
    sink_tokens: int,
    global_tokens: int,
    block_layout: torch.Tensor | None,
    layout_block_size: int,
    key_padding: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, flash.MaskArgs] | None:
    """Checked inputs of a dense launch and its mask in kernel form (with the layout's tile lists), or None
    when the call has no query or no key (its output is all zeros)."""
    check_dense(q, k, v, scale=scale, window=tuple(window), sink_tokens=sink_tokens,
                global_tokens=global_tokens, block_layout=block_layout, layout_block_size=layout_block_size,
                key_padding=key_padding, causal=causal)
    b, hq, nq, _ = q.shape
    nk = k.shape[2]
    if b == 0 or nq == 0 or nk == 0:
        return None
    q, k, v = dense_inputs(q), dense_inputs(k), dense_inputs(v)
    kp = key_padding.to(torch.int8).contiguous() if key_padding is not None else None
    mask = flash.MaskArgs(causal=causal, window=tuple(window), sink_tokens=sink_tokens,
                          global_tokens=global_tokens, key_padding=kp, layout_block_size=layout_block_size)
    if block_layout is not None:
        forward_tile, backward_tile = flash.sparse_tiles(layout_block_size)
        mask.layout, mask.tiles = _tile_lists(block_layout, mask, nq, nk, forward_tile)
        if backward_tile == forward_tile:
            mask.backward_tiles = lambda: mask.tiles
        else:
            # built on the first backward pass, which inference never runs
            mask.backward_tiles = functools.cache(lambda: _tile_lists(block_layout, mask, nq, nk, backward_tile)[1])
    return q, k, v, mask


def _tile_lists(block_layout: torch.Tensor, mask: flash.MaskArgs, nq: int, nk: int,
                tile: tuple[int, int]) -> tuple[torch.Tensor, TileLists]:
    """The int8 layout the kernels read and its lists for kernel tiles ``tile`` (kept per layout tensor)."""

    def build() -> tuple[torch.Tensor, TileLists]:
        layout = (block_layout != 0).to(torch.int8).contiguous()
        return layout, build_tile_lists(layout, mask.lb, nq, nk, causal=mask.causal, has_window=mask.has_window,
                                        wl=mask.wl, wr=mask.wr, sink=mask.sink, gq=mask.gq, block_m=tile[0],
                                        block_n=tile[1])

    key = (mask.lb, nq, nk, mask.causal, mask.has_window, mask.wl, mask.wr, mask.sink, mask.gq, tile)
    return TILE_LISTS.get(block_layout, key, build)


def fused_attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    scale: float,
    causal: bool,
    window: tuple[int | None, int | None] = (None, None),
    sink_tokens: int = 0,
    global_tokens: int = 0,
) -> torch.Tensor:
    """Packed variable-length attention. q [Tq, Hq, D], k, v [Tk, Hkv, D]; sequence b is
    q[cu_seqlens_q[b]:cu_seqlens_q[b+1]] against k[cu_seqlens_k[b]:cu_seqlens_k[b+1]], with the mask
    of `fused_attention` applied per sequence (causal is bottom-right aligned per sequence)."""
    prepared = varlen_launch(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale=scale,
                             causal=causal, window=window, sink_tokens=sink_tokens, global_tokens=global_tokens)
    if prepared is None:
        return torch.zeros_like(q)
    q, k, v, mask, max_q, max_k = prepared
    return _attend(q, k, v, float(scale), mask, True, max_q, max_k)


def varlen_launch(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *, scale, causal, window,
                  sink_tokens, global_tokens):
    """Checked inputs of a varlen launch and its mask in kernel form, or None when there is nothing to attend."""
    check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale=scale,
                 window=tuple(window), sink_tokens=sink_tokens, global_tokens=global_tokens)
    if q.shape[0] == 0 or k.shape[0] == 0 or cu_seqlens_q.numel() < 2 or max_seqlen_q == 0:
        return None
    q, k, v = dense_inputs(q), dense_inputs(k), dense_inputs(v)
    mask = flash.MaskArgs(causal=causal, window=tuple(window), sink_tokens=sink_tokens,
                          global_tokens=global_tokens, cu_q=cu_seqlens_q.to(torch.int32).contiguous(),
                          cu_k=cu_seqlens_k.to(torch.int32).contiguous())
    return q, k, v, mask, int(max_seqlen_q), max(int(max_seqlen_k), 1)


def _attend(q, k, v, scale: float, mask, varlen: bool, max_q: int, max_k: int) -> torch.Tensor:
    """Through autograd when a gradient may be asked for, else straight to the forward kernel: inference
    skips building an autograd node and saving tensors for a backward pass that never comes."""
    if records_grad(q, k, v):
        return _FusedAttention.apply(q, k, v, scale, mask, varlen, max_q, max_k)
    return flash.attention_forward(q, k, v, scale, mask, varlen, max_q, max_k)[0]
