"""The kernels as custom ops: single operations to ``torch.compile`` and CUDA graphs.

Ops under the ``hf_efficient_attn`` namespace, each with a fake (shape-only) implementation so the
compiler can trace through it:

* ``attention`` / ``attention_backward`` (with autograd): the dense kernels (causal, windows, sinks,
  globals, block layouts named by a registered layout, key padding), returning the output and the
  log-sum-exp, and the three gradients. Optional per-token document ids: when they mark several documents
  in a row, the op runs the packed (variable-length) kernels instead. That check reads the host, inside
  the op, where the compiler does not look: it is how a compiled training step handles position ids that
  may restart (packed sequences), which nothing before the call can tell;
* ``neighbourhood`` / ``neighbourhood_backward`` (with autograd): the 2-D neighbourhood kernels over a patch
  grid (`neighbourhood`), returning the output and the log-sum-exp, and the three gradients;
* ``decode``: the split-key decode kernel (forward only).

The Python entry points below (`fused_attention`, `neighbourhood_attention`, `decode_attention`) take the
variants' terms. In eager mode they call the kernels directly, which spends less host time per call than the
custom-op dispatcher; under ``torch.compile`` they call the ops.
"""

from __future__ import annotations

import torch

from ..context import tracing
from ..grad_mode import records_grad
from ..op_window import window_bounds, window_sides
from ..variants import block_layout as layouts
from . import decode, flash, neighbourhood
from .checks import KernelInputError
from .decode import decode_attention as _decode_kernel
from .function import _attend, dense_launch, fused_attention_varlen, varlen_launch
from .neighbourhood_function import neighbourhood_attention as _neighbourhood_eager
from .neighbourhood_function import neighbourhood_launch
from .strides import dense_inputs, empty_in_kernel_layout, in_kernel_layout

EXACT_STRIDES = tuple(getattr(torch.Tag, name) for name in ("needs_exact_strides", "needs_fixed_stride_order")
                      if hasattr(torch.Tag, name))[:1]
"""The attention ops' results take their inputs' layouts (`strides`), so a compiled graph must hand them the
inputs in the layouts their fake implementations saw (exact strides; their order on torch releases
without that tag)."""


def _resolve_layout(layout: str, blocks: int, causal: bool, device: torch.device) -> torch.Tensor | None:
    return None if not layout else layouts.layout_for(layout, blocks, causal, device)


# --------------------------------------------------------------------------------------------------
# packed documents (tokens laid end to end)
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


def _packed(documents: torch.Tensor | None) -> bool:
    """Whether any row holds more than one document (reads the host)."""
    return documents is not None and bool((documents[:, -1] != 0).any())


# --------------------------------------------------------------------------------------------------
# dense attention
# --------------------------------------------------------------------------------------------------


def _launch(q, k, v, key_padding, documents, scale, causal, window_left, window_right, sink_tokens, global_tokens,
            layout, layout_blocks, layout_block_size):
    """``(packed, prepared)``: the launch of the op's call in the dense or the packed form (None when the
    call has no query or key)."""
    window = window_sides(window_left, window_right)
    if _packed(documents):
        if sink_tokens or global_tokens or layout or key_padding is not None:
            raise KernelInputError(
                "packed documents (position ids that restart within a row) cannot be combined with sink tokens, "
                "global tokens, block layouts or padding on the kernels; under torch.compile pass an "
                "attention_mask (rows are then not taken as packed) or run the model eagerly"
            )
        cumulative, longest = _sequences(documents)
        return True, varlen_launch(_tokens_first(q), _tokens_first(k), _tokens_first(v), cumulative, cumulative,
                                   longest, longest, scale=scale, causal=True, window=window, sink_tokens=0,
                                   global_tokens=0)
    return False, dense_launch(q, k, v, scale=scale, causal=causal, window=window, sink_tokens=sink_tokens,
                               global_tokens=global_tokens,
                               block_layout=_resolve_layout(layout, layout_blocks, causal, q.device),
                               layout_block_size=layout_block_size, key_padding=key_padding)


@torch.library.custom_op("hf_efficient_attn::attention", mutates_args=(), tags=EXACT_STRIDES)
def _attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding: torch.Tensor | None,
    documents: torch.Tensor | None,
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
    packed, prepared = _launch(q, k, v, key_padding, documents, scale, causal, window_left, window_right,
                               sink_tokens, global_tokens, layout, layout_blocks, layout_block_size)
    if prepared is None:
        return empty_in_kernel_layout(q).zero_(), torch.full(q.shape[:3], float("inf"), dtype=torch.float32,
                                                             device=q.device)
    if not packed:
        q, k, v, mask = prepared
        return flash.attention_forward(q, k, v, scale, mask)
    tq, tk, tv, mask, max_q, max_k = prepared
    out, lse = flash.attention_forward(tq, tk, tv, scale, mask, True, max_q, max_k)
    batch, heads, length = q.shape[:3]
    return (in_kernel_layout(_heads_first(out, batch), q),
            lse.reshape(heads, batch, length).transpose(0, 1).contiguous())


def _output_and_lse_like(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fake output of a forward op: the attention output in the layout the kernels give it
    (`strides.empty_in_kernel_layout`) and its float32 log-sum-exp."""
    return empty_in_kernel_layout(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@_attention_op.register_fake
def _(q, k, v, key_padding, documents, scale, causal, window_left, window_right, sink_tokens, global_tokens, layout,
      layout_blocks, layout_block_size):
    return _output_and_lse_like(q)


@torch.library.custom_op("hf_efficient_attn::attention_backward", mutates_args=(), tags=EXACT_STRIDES)
def _attention_backward_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    key_padding: torch.Tensor | None,
    documents: torch.Tensor | None,
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
    packed, prepared = _launch(q, k, v, key_padding, documents, scale, causal, window_left, window_right,
                               sink_tokens, global_tokens, layout, layout_blocks, layout_block_size)
    if prepared is None:
        return tuple(empty_in_kernel_layout(x).zero_() for x in (q, k, v))
    if not packed:
        prepared_q, prepared_k, prepared_v, mask = prepared
        return flash.attention_backward(grad_out, prepared_q, prepared_k, prepared_v, out, lse, scale, mask)
    tq, tk, tv, mask, max_q, max_k = prepared
    batch = q.shape[0]
    token_lse = lse.transpose(0, 1).reshape(q.shape[1], -1).contiguous()  # [heads, batch * length]
    dq, dk, dv = flash.attention_backward(_tokens_first(grad_out).contiguous(), tq, tk, tv,
                                          _tokens_first(out).contiguous(), token_lse, scale, mask, True, max_q, max_k)
    return tuple(in_kernel_layout(_heads_first(grad, batch), like) for grad, like in ((dq, q), (dk, k), (dv, v)))


@_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, key_padding, documents, scale, causal, window_left, window_right, sink_tokens,
      global_tokens, layout, layout_blocks, layout_block_size):
    return empty_in_kernel_layout(q), empty_in_kernel_layout(k), empty_in_kernel_layout(v)


def _attention_setup(ctx, inputs, output) -> None:
    q, k, v, key_padding, documents, *params = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], key_padding, documents)
    ctx.params = params


def _attention_grad(ctx, grad_out, grad_lse):
    q, k, v, out, lse, key_padding, documents = ctx.saved_tensors
    dq, dk, dv = _attention_backward_op(grad_out, q, k, v, out, lse, key_padding, documents, *ctx.params)
    return (dq, dk, dv) + (None,) * 11


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
    documents: torch.Tensor | None = None,
) -> torch.Tensor:
    """`function.fused_attention` with the block layout given by name (see `variants.block_layout`), and
    optional ``documents`` [batch, length] ids of packed documents (causal, ids change where a document
    starts; queries and keys the same tokens)."""
    if tracing():
        out, _ = _attention_op(q, k, v, key_padding, documents, float(scale), bool(causal),
                               *window_bounds(*window), int(sink_tokens), int(global_tokens), layout or "",
                               layout_blocks, layout_block_size)
        return out
    if documents is not None:
        cumulative, longest = _sequences(documents)
        out = fused_attention_varlen(_tokens_first(q), _tokens_first(k), _tokens_first(v), cumulative, cumulative,
                                     longest, longest, scale=scale, causal=True, window=window)
        return _heads_first(out, q.shape[0])
    prepared = dense_launch(q, k, v, scale=scale, causal=causal, window=window, sink_tokens=sink_tokens,
                            global_tokens=global_tokens,
                            block_layout=_resolve_layout(layout or "", layout_blocks, causal, q.device),
                            layout_block_size=layout_block_size, key_padding=key_padding)
    if prepared is None:
        return torch.zeros_like(q)
    q, k, v, mask = prepared
    return _attend(q, k, v, float(scale), mask, False, q.shape[2], k.shape[2])


class DenseLaunch:
    """`fused_attention` with every argument but q, k, v fixed, for the layers of one forward.

    The layers of a forward make calls of the same shapes under the same mask, so in eager mode the first
    call's checks and its mask in kernel form (the int8 key padding, the layout's tile lists) serve the
    later calls of the same shapes, which then cost only the launch: without gradients, the first call's
    launch itself, bound (`flash.ForwardRelaunch`). Packed documents (whose offsets depend on the ids)
    and traced calls go through `fused_attention` each time.
    """

    def __init__(self, **arguments) -> None:
        self.arguments = arguments
        self._prepared: tuple[tuple, flash.MaskArgs | None, flash.ForwardRelaunch | None] | None = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        arguments = self.arguments
        if tracing() or arguments["documents"] is not None:
            return fused_attention(q, k, v, **arguments)
        shapes = (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device)
        if self._prepared is None or self._prepared[0] != shapes:
            layout = arguments["layout"] or ""
            prepared = dense_launch(
                q, k, v, scale=arguments["scale"], causal=arguments["causal"], window=arguments["window"],
                sink_tokens=arguments["sink_tokens"], global_tokens=arguments["global_tokens"],
                block_layout=_resolve_layout(layout, arguments["layout_blocks"], arguments["causal"], q.device),
                layout_block_size=arguments["layout_block_size"], key_padding=arguments["key_padding"])
            mask = None if prepared is None else prepared[3]
            forward = None if mask is None else flash.ForwardRelaunch(float(arguments["scale"]), mask)
            self._prepared = (shapes, mask, forward)
        _, mask, forward = self._prepared
        if mask is None:
            return torch.zeros_like(q)
        if not records_grad(q, k, v):
            output = forward.relaunch(q, k, v)
            return forward(dense_inputs(q), dense_inputs(k), dense_inputs(v)) if output is None else output
        q, k, v = dense_inputs(q), dense_inputs(k), dense_inputs(v)
        return _attend(q, k, v, float(arguments["scale"]), mask, False, q.shape[2], k.shape[2])


# --------------------------------------------------------------------------------------------------
# 2-D neighbourhood
# --------------------------------------------------------------------------------------------------


def _neighbourhood_prepared(q, k, v, scale, rows, cols, reach, prefix_tokens, leading_keys, global_queries):
    return neighbourhood_launch(q.contiguous(), k.contiguous(), v.contiguous(), scale=scale, grid=(rows, cols),
                                reach=reach, prefix_tokens=prefix_tokens, leading_keys=leading_keys,
                                global_queries=global_queries)


@torch.library.custom_op("hf_efficient_attn::neighbourhood", mutates_args=())
def _neighbourhood_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    rows: int,
    cols: int,
    reach: int,
    prefix_tokens: int,
    leading_keys: int,
    global_queries: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    prepared = _neighbourhood_prepared(q, k, v, scale, rows, cols, reach, prefix_tokens, leading_keys,
                                       global_queries)
    if prepared is None:
        return torch.zeros_like(q), torch.full(q.shape[:3], float("inf"), dtype=torch.float32, device=q.device)
    q, k, v, mask = prepared
    return neighbourhood.neighbourhood_forward(q, k, v, scale, mask)


@_neighbourhood_op.register_fake
def _(q, k, v, scale, rows, cols, reach, prefix_tokens, leading_keys, global_queries):
    return _output_and_lse_like(q)


@torch.library.custom_op("hf_efficient_attn::neighbourhood_backward", mutates_args=())
def _neighbourhood_backward_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    rows: int,
    cols: int,
    reach: int,
    prefix_tokens: int,
    leading_keys: int,
    global_queries: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    prepared = _neighbourhood_prepared(q, k, v, scale, rows, cols, reach, prefix_tokens, leading_keys,
                                       global_queries)
    if prepared is None:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    q, k, v, mask = prepared
    return neighbourhood.neighbourhood_backward(grad_out.contiguous(), q, k, v, out.contiguous(), lse, scale, mask)


@_neighbourhood_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, scale, rows, cols, reach, prefix_tokens, leading_keys, global_queries):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _neighbourhood_setup(ctx, inputs, output) -> None:
    q, k, v, *params = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1])
    ctx.params = params


def _neighbourhood_grad(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _neighbourhood_backward_op(grad_out, q, k, v, out, lse, *ctx.params)
    return (dq, dk, dv) + (None,) * 7


torch.library.register_autograd("hf_efficient_attn::neighbourhood", _neighbourhood_grad,
                                setup_context=_neighbourhood_setup)


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
    """`neighbourhood_function.neighbourhood_attention`: the kernels directly in eager mode, the
    ``neighbourhood`` op under ``torch.compile``."""
    if not tracing():
        return _neighbourhood_eager(q, k, v, scale=scale, grid=grid, reach=reach, prefix_tokens=prefix_tokens,
                                    leading_keys=leading_keys, global_queries=global_queries)
    leading_keys = prefix_tokens if leading_keys is None else leading_keys
    global_queries = prefix_tokens if global_queries is None else global_queries
    out, _ = _neighbourhood_op(q, k, v, float(scale), int(grid[0]), int(grid[1]), int(reach), int(prefix_tokens),
                               int(leading_keys), int(global_queries))
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


class DecodeLaunch:
    """`decode_attention` with its scale and key mask fixed, for the layers of one forward.

    The first call settles the launch from its shapes (`decode.prepare_decode`: checks, splits, the key
    mask as int8); later calls of the same shapes pay the split and combine launches only: eager decoding
    at small batches waits on the host, so each layer's host time is the step's time. Traced calls go
    through the custom op."""

    def __init__(self, *, scale: float, key_padding: torch.Tensor | None = None) -> None:
        self.scale = float(scale)
        self.key_padding = key_padding
        self._prepared: tuple[tuple, decode.DecodeSetup | None] | None = None

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if tracing():
            return _decode_op(q, k, v, self.key_padding, self.scale)
        shapes = (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device)
        if self._prepared is None or self._prepared[0] != shapes:
            setup = decode.prepare_decode(q, k, v, scale=self.scale, key_padding=self.key_padding)
            self._prepared = (shapes, setup)
        setup = self._prepared[1]
        return torch.zeros_like(q) if setup is None else decode.run_decode(setup, q, k, v)
