"""The kernels as custom ops: single operations to ``torch.compile`` and CUDA graphs.

Three ops under the ``hf_efficient_attn`` namespace, each with a fake (shape-only) implementation so the
compiler can trace through it, and the attention ops with autograd:

* ``attention`` / ``attention_backward``: the dense kernels (causal, windows, sinks, globals, block layouts
  named by a registered layout, key padding); outputs and log-sum-exp, and the three gradients;
* ``decode``: the split-key decode kernel (forward only);
* ``packed_attention`` / ``packed_attention_backward``: packed documents given as per-token document ids.
  The op turns them into sequence offsets itself, which needs host reads: opaque to the compiler, they
  keep the graph whole (such calls come from training, which CUDA graphs do not capture).

The Python entry points below (`fused_attention`, `decode_attention`, `packed_attention`) take the
variants' terms. In eager mode they call the kernels directly, which spends less host time per call than
the custom-op dispatcher; under ``torch.compile`` they call the ops.
"""

from __future__ import annotations

import torch

from ..context import tracing
from ..variants import block_layout as layouts
from . import flash
from .decode import decode_attention as _decode_kernel
from .function import _attend, dense_launch, fused_attention_varlen, varlen_launch

NO_BOUND = -1
"""A window side without a bound, in the ops' int arguments."""


def _window(left: int, right: int) -> tuple[int | None, int | None]:
    return (None if left == NO_BOUND else left, None if right == NO_BOUND else right)


def _bound(side: int | None) -> int:
    return NO_BOUND if side is None else side


def _resolve_layout(layout: str, blocks: int, causal: bool, device: torch.device) -> torch.Tensor | None:
    return None if not layout else layouts.layout_on(layout, blocks, causal, device)


# --------------------------------------------------------------------------------------------------
# dense attention
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("hf_efficient_attn::attention", mutates_args=())
def _attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding: torch.Tensor | None,
    scale: float,
    causal: bool,
    window_left: int,
    window_right: int,
    sink_tokens: int,
    global_tokens: int,
    layout: str,
    layout_blocks: int,
    layout_block_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    prepared = dense_launch(q, k, v, scale=scale, causal=causal, window=_window(window_left, window_right),
                            sink_tokens=sink_tokens, global_tokens=global_tokens,
                            block_layout=_resolve_layout(layout, layout_blocks, causal, q.device),
                            layout_block_size=layout_block_size, key_padding=key_padding)
    if prepared is None:
        return torch.zeros_like(q), torch.full(q.shape[:3], float("inf"), dtype=torch.float32, device=q.device)
    q, k, v, mask = prepared
    return flash.attention_forward(q, k, v, scale, mask)


@_attention_op.register_fake
def _(q, k, v, key_padding, scale, causal, window_left, window_right, sink_tokens, global_tokens, layout,
      layout_blocks, layout_block_size):
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("hf_efficient_attn::attention_backward", mutates_args=())
def _attention_backward_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_padding: torch.Tensor | None,
    scale: float,
    causal: bool,
    window_left: int,
    window_right: int,
    sink_tokens: int,
    global_tokens: int,
    layout: str,
    layout_blocks: int,
    layout_block_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    prepared = dense_launch(q, k, v, scale=scale, causal=causal, window=_window(window_left, window_right),
                            sink_tokens=sink_tokens, global_tokens=global_tokens,
                            block_layout=_resolve_layout(layout, layout_blocks, causal, q.device),
                            layout_block_size=layout_block_size, key_padding=key_padding)
    if prepared is None:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    q, k, v, mask = prepared
    return flash.attention_backward(grad_out, q, k, v, out, lse, scale, mask)


@_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, key_padding, scale, causal, window_left, window_right, sink_tokens,
      global_tokens, layout, layout_blocks, layout_block_size):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _attention_setup(ctx, inputs, output) -> None:
    q, k, v, key_padding, *params = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], key_padding)
    ctx.params = params


def _attention_grad(ctx, grad_out, grad_lse):
    q, k, v, out, lse, key_padding = ctx.saved_tensors
    dq, dk, dv = _attention_backward_op(grad_out.contiguous(), q, k, v, out, lse, key_padding, *ctx.params)
    return (dq, dk, dv) + (None,) * 10


torch.library.register_autograd("hf_efficient_attn::attention", _attention_grad, setup_context=_attention_setup)


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
    layout: str | None = None,
    layout_blocks: int = 0,
    layout_block_size: int = 64,
    key_padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """`function.fused_attention` with the block layout given by name (see `variants.block_layout`)."""
    if not tracing():
        prepared = dense_launch(q, k, v, scale=scale, causal=causal, window=window, sink_tokens=sink_tokens,
                                global_tokens=global_tokens,
                                block_layout=_resolve_layout(layout or "", layout_blocks, causal, q.device),
                                layout_block_size=layout_block_size, key_padding=key_padding)
        if prepared is None:
            return torch.zeros_like(q)
        q, k, v, mask = prepared
        return _attend(q, k, v, float(scale), mask, False, q.shape[2], k.shape[2])
    out, _ = _attention_op(q, k, v, key_padding, float(scale), bool(causal), _bound(window[0]), _bound(window[1]),
                           int(sink_tokens), int(global_tokens), layout or "", layout_blocks, layout_block_size)
    return out


# --------------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("hf_efficient_attn::decode", mutates_args=())
def _decode_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding: torch.Tensor | None,
               scale: float) -> torch.Tensor:
    return _decode_kernel(q, k, v, scale=scale, key_padding=key_padding).contiguous()


@_decode_op.register_fake
def _(q, k, v, key_padding, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                     key_padding: torch.Tensor | None = None) -> torch.Tensor:
    """`decode.decode_attention` (a few queries against a long cache, forward only)."""
    if not tracing():
        return _decode_kernel(q, k, v, scale=scale, key_padding=key_padding)
    return _decode_op(q, k, v, key_padding, float(scale))


# --------------------------------------------------------------------------------------------------
# packed documents
# --------------------------------------------------------------------------------------------------


def _sequences(documents: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Offsets (int32 ``[sequences + 1]``) of the documents of ``[batch, length]`` ids laid end to end,
    and the longest document. Reads the host."""
    batch, length = documents.shape
    starts = torch.ones_like(documents, dtype=torch.bool)
    starts[:, 1:] = documents[:, 1:] != documents[:, :-1]
    offsets = starts.reshape(-1).nonzero().squeeze(-1)
    total = torch.tensor([batch * length], device=offsets.device, dtype=offsets.dtype)
    cumulative = torch.cat([offsets, total]).to(torch.int32)
    return cumulative, int((cumulative[1:] - cumulative[:-1]).max())


def _tokens_first(x: torch.Tensor) -> torch.Tensor:
    """``[b, h, n, d]`` as ``[b * n, h, d]`` (the varlen kernels' layout)."""
    batch, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(batch * length, heads, dim)


def _heads_first(x: torch.Tensor, batch: int) -> torch.Tensor:
    total, heads, dim = x.shape
    return x.reshape(batch, total // batch, heads, dim).transpose(1, 2)


def _packed_launch(q, k, v, documents, scale, window_left, window_right):
    cumulative, longest = _sequences(documents)
    return varlen_launch(_tokens_first(q), _tokens_first(k), _tokens_first(v), cumulative, cumulative, longest,
                         longest, scale=scale, causal=True, window=_window(window_left, window_right),
                         sink_tokens=0, global_tokens=0)


@torch.library.custom_op("hf_efficient_attn::packed_attention", mutates_args=())
def _packed_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, documents: torch.Tensor, scale: float,
               window_left: int, window_right: int) -> tuple[torch.Tensor, torch.Tensor]:
    prepared = _packed_launch(q, k, v, documents, scale, window_left, window_right)
    if prepared is None:
        return torch.zeros_like(q), q.new_full((q.shape[1], q.shape[0] * q.shape[2]), float("inf"),
                                               dtype=torch.float32)
    tq, tk, tv, mask, max_q, max_k = prepared
    out, lse = flash.attention_forward(tq, tk, tv, scale, mask, True, max_q, max_k)
    return _heads_first(out, q.shape[0]).contiguous(), lse


@_packed_op.register_fake
def _(q, k, v, documents, scale, window_left, window_right):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            q.new_empty((q.shape[1], q.shape[0] * q.shape[2]), dtype=torch.float32))


@torch.library.custom_op("hf_efficient_attn::packed_attention_backward", mutates_args=())
def _packed_backward_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        out: torch.Tensor, lse: torch.Tensor, documents: torch.Tensor, scale: float,
                        window_left: int, window_right: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    prepared = _packed_launch(q, k, v, documents, scale, window_left, window_right)
    if prepared is None:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    tq, tk, tv, mask, max_q, max_k = prepared
    batch = q.shape[0]
    dq, dk, dv = flash.attention_backward(_tokens_first(grad_out).contiguous(), tq, tk, tv,
                                          _tokens_first(out).contiguous(), lse, scale, mask, True, max_q, max_k)
    return (_heads_first(dq, batch).contiguous(), _heads_first(dk, batch).contiguous(),
            _heads_first(dv, batch).contiguous())


@_packed_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, documents, scale, window_left, window_right):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _packed_setup(ctx, inputs, output) -> None:
    q, k, v, documents, *params = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], documents)
    ctx.params = params


def _packed_grad(ctx, grad_out, grad_lse):
    q, k, v, out, lse, documents = ctx.saved_tensors
    dq, dk, dv = _packed_backward_op(grad_out.contiguous(), q, k, v, out, lse, documents, *ctx.params)
    return dq, dk, dv, None, None, None, None


torch.library.register_autograd("hf_efficient_attn::packed_attention", _packed_grad, setup_context=_packed_setup)


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, documents: torch.Tensor, *, scale: float,
                     window: tuple[int | None, int | None] = (None, None)) -> torch.Tensor:
    """Causal attention within packed documents: ``documents`` [batch, length] holds each token's
    document id (ids change where a document starts). q, k, v [B, H, N, D], N the same for all three."""
    if not tracing():
        cumulative, longest = _sequences(documents)
        out = fused_attention_varlen(_tokens_first(q), _tokens_first(k), _tokens_first(v), cumulative, cumulative,
                                     longest, longest, scale=scale, causal=True, window=window)
        return _heads_first(out, q.shape[0])
    out, _ = _packed_op(q, k, v, documents, float(scale), _bound(window[0]), _bound(window[1]))
    return out
