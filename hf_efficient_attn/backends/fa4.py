"""FlashAttention-4's Hopper kernels (the ``flash-attn-4`` package, written in the CuTe DSL, import name
``flash_attn.cute``) as a backend.

Install with ``pip install 'hf-efficient-attn[fa4]'``. On Hopper (sm90) it runs causal attention and
sliding windows, forward and backward, with grouped-query heads, ahead of cuDNN on the H100: causal at 16k
tokens 1.22x cuDNN's forward and 1.24x its forward + backward at head size 64, a window of 1024 1.61x
FlexAttention's forward at head size 128 (benchmarks/results/h100-archive-2026-12/kernels-h100-fa4). It runs no sinks, global
tokens, block layouts, padding or packed documents of ours: the capability table refuses them
(`capabilities.FA4`) and the Triton kernels keep them.

The window mapping
------------------
Ours (`fused_path.KernelMask`): query ``i`` sits at ``p = i + (k_len - q_len)`` in a causal call and
``p = i`` otherwise, and sees key ``j`` when ``(not causal or j <= p)``, ``p - j < left`` and
``j - p < right`` (None: that side is unbounded). FlashAttention counts window sides in keys besides the
query's own and aligns its band to the last keys: query ``i`` sees ``j`` when
``i + k_len - q_len - wl <= j <= i + k_len - q_len + wr``. So a causal call maps to
``(wl, wr) = (left - 1, 0)`` (``left`` None: plain causal), and a bidirectional band to
``(left - 1, right - 1)`` where its queries and keys align (``q_len == k_len``); a bidirectional band over
more keys than queries is refused (FlashAttention would move it to the last keys), as are window sides of
0 keys and causal calls with more queries than keys (their first queries see no key).

The op
------
`attention` calls the custom op ``hf_efficient_attn::fa4_attention`` (output and the natural-log
log-sum-exp), whose autograd runs ``hf_efficient_attn::fa4_attention_backward``; both have fake
implementations, so ``torch.compile(fullgraph=True)`` and CUDA graphs see single operations. The kernels
take ``[batch, len, heads, head_dim]``: ours are passed as transposed views (no copy where the head
dimension is contiguous), and outputs and gradients come back as views of the kernels' layout. Each new
combination of dtype, head size, heads, mask and window is compiled by the CuTe DSL the first time it
runs in a process (3-4 s on an H100), then reused at every length; each call also costs 60-80 us of host
time, so short calls stay on the other backends (`library_routes.picks_fa4`).
The package's entry points used here (``_flash_attn_fwd``, ``_flash_attn_bwd``) are its internal ones,
named in this module only and checked when it loads (`unavailable_reason`).
"""

from __future__ import annotations

import functools
import importlib.util
import warnings

import torch

from ..grad_mode import records_grad
from ..op_window import window_bounds, window_sides
from .operands import operand_refusal

HEAD_DIMS = (64, 96, 128)
"""The head sizes taken: those its Hopper forward and backward both run and our tests check."""

_find_spec = importlib.util.find_spec


@functools.cache
def unavailable_reason() -> str | None:
    """None when FlashAttention-4 can run here, else why not (package, CUDA, GPU generation). Never raises;
    the answer is kept for the process (``unavailable_reason.cache_clear()`` asks again)."""
    try:
        if _find_spec("flash_attn") is None or _find_spec("flash_attn.cute") is None:
            return ("flash-attn-4 is not installed (no module 'flash_attn.cute'); install it with "
                    "`pip install 'hf-efficient-attn[fa4]'`")
        if not torch.cuda.is_available():
            return "CUDA is not available: FlashAttention-4 runs on NVIDIA GPUs only"
        major, minor = torch.cuda.get_device_capability()
        if major != 9:
            return (f"the GPU is sm{major}{minor}; this backend runs FlashAttention-4's Hopper (sm90) kernels "
                    "only")
        from flash_attn.cute import interface

        missing = [name for name in ("_flash_attn_fwd", "_flash_attn_bwd") if not hasattr(interface, name)]
    except Exception as exc:  # a probe must never raise
        return f"flash-attn-4 could not be loaded ({type(exc).__name__}: {exc})"
    if missing:
        return (f"this flash-attn-4 has no {', '.join(missing)}; install the version the `fa4` extra pins "
                "(`pip install 'hf-efficient-attn[fa4]'`)")
    return None


def available() -> bool:
    """Whether the package imports, CUDA is there and the GPU is a Hopper. Never raises."""
    return unavailable_reason() is None


def fa4_window(causal: bool, window_left: int | None, window_right: int | None, q_len: int,
               k_len: int) -> tuple[int | None, int | None] | str:
    """FlashAttention's ``(window_size_left, window_size_right)`` for our window (see the module
    docstring), or why there is none."""
    for name, side in (("window_left", window_left), ("window_right", window_right)):
        if side is not None and (not isinstance(side, int) or isinstance(side, bool) or side < 1):
            return f"{name} must be None or an int >= 1 (a side of 0 keys hides every key), got {side!r}"
    if q_len < 1 or k_len < 1:
        return f"the call has {q_len} queries and {k_len} keys; FlashAttention-4 needs at least one of each"
    left = None if window_left is None else window_left - 1
    if causal:
        if q_len > k_len:
            return (f"causal attention with more queries ({q_len}) than keys ({k_len}): the first queries see no "
                    "key, which FlashAttention's band (aligned to the last keys) does not express")
        return left, 0
    right = None if window_right is None else window_right - 1
    if (left is not None or right is not None) and q_len != k_len:
        return (f"a bidirectional window over {q_len} queries and {k_len} keys: FlashAttention aligns its band "
                "to the last keys, ours to the first; it runs bidirectional windows with as many queries as keys")
    return left, right


def supports(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    causal: bool,
    window_left: int | None = None,
    window_right: int | None = None,
    needs_grad: bool = False,
) -> str | None:
    """None when `attention` computes this call exactly, else the reason why not. Reads shapes, dtypes and
    devices only (never tensor values), so it is safe under tracing. ``needs_grad``: the backward will
    run too (the same head sizes as the forward)."""
    del needs_grad  # the forward's limits are the backward's (`HEAD_DIMS`)
    reason = operand_refusal(query, key, value, "FlashAttention-4")
    if reason is not None:
        return reason
    batch, q_heads, q_len, head_dim = query.shape
    k_len = key.shape[2]
    if head_dim not in HEAD_DIMS:
        return f"head_dim={head_dim}: this backend runs FlashAttention-4 at head sizes {', '.join(map(str, HEAD_DIMS))}"
    if batch == 0 or q_heads == 0:
        return f"the call is empty (batch {batch}, heads {q_heads})"
    window = fa4_window(causal, window_left, window_right, q_len, k_len)
    if isinstance(window, str):
        return window
    devices = {t.device for t in (query, key, value)}
    if len(devices) > 1:
        return f"the tensors are on different devices ({sorted(map(str, devices))}); move them to one GPU"
    if query.device.type != "cuda":
        return f"the tensors are on '{query.device}'; FlashAttention-4 runs CUDA tensors only"
    return unavailable_reason()


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scale: float,
    causal: bool,
    window_left: int | None = None,
    window_right: int | None = None,
) -> torch.Tensor:
    """Softmax attention ``[batch, q_heads, q_len, head_dim]`` on FlashAttention-4 under our window (see the
    module docstring). query ``[batch, q_heads, q_len, head_dim]``, key and value
    ``[batch, kv_heads, k_len, head_dim]``. Differentiable in query, key and value; the log-sum-exp is kept
    for the backward only when autograd records the call. Raises `ValueError` with `supports`' reason for
    a call it cannot run."""
    need_lse = records_grad(query, key, value)
    out, _ = _forward_op(query, key, value, float(scale), bool(causal), *window_bounds(window_left, window_right),
                         need_lse)
    return out


# --------------------------------------------------------------------------------------------------
# the custom ops
# --------------------------------------------------------------------------------------------------


@functools.cache
def _quiet_compile_notice() -> None:
    """Hide the CuTe DSL's notice, printed at every compile of FlashAttention-4's kernels, that it passes
    the kernels' auxiliary data as a constant (what they expect); once per process, this message only."""
    warnings.filterwarnings("ignore", message=r"Argument aux_data \(position \d+\) cannot be converted to a JitArgument",
                            category=UserWarning)


def _checked_window(q, k, v, causal, left, right) -> tuple[int | None, int | None]:
    reason = supports(q, k, v, causal=causal, window_left=left, window_right=right)
    if reason is not None:
        raise ValueError(f"FlashAttention-4 cannot run this call: {reason}")
    _quiet_compile_notice()
    return fa4_window(causal, left, right, q.shape[2], k.shape[2])


def _heads_second(t: torch.Tensor) -> torch.Tensor:
    """``[batch, heads, len, d]`` as the kernels' ``[batch, len, heads, d]`` (a view)."""
    return t.transpose(1, 2)


def _kernel_layout(t: torch.Tensor) -> torch.Tensor:
    """A new ``[batch, heads, len, d]`` tensor laid out as the kernels write it: ``[batch, len, heads, d]``
    contiguous, seen through `_heads_second` (what the ops return, so transformers' own transpose back to
    ``[batch, len, heads, d]`` costs no copy)."""
    batch, heads, length, dim = t.shape
    return _heads_second(t.new_empty((batch, length, heads, dim)))


@torch.library.custom_op("hf_efficient_attn::fa4_attention", mutates_args=())
def _forward_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    causal: bool,
    window_left: int,
    window_right: int,
    need_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    from flash_attn.cute.interface import _flash_attn_fwd

    wl, wr = _checked_window(q, k, v, causal, *window_sides(window_left, window_right))
    out = _kernel_layout(q)
    _, lse, *_ = _flash_attn_fwd(_heads_second(q), _heads_second(k), _heads_second(v), softmax_scale=scale,
                                 causal=causal, window_size_left=wl, window_size_right=wr, return_lse=need_lse,
                                 out=_heads_second(out))
    if lse is None:
        lse = q.new_empty((0,), dtype=torch.float32)
    return out, lse


@_forward_op.register_fake
def _(q, k, v, scale, causal, window_left, window_right, need_lse):
    batch, heads, q_len, _ = q.shape
    lse = q.new_empty((batch, heads, q_len) if need_lse else (0,), dtype=torch.float32)
    return _kernel_layout(q), lse


@torch.library.custom_op("hf_efficient_attn::fa4_attention_backward", mutates_args=())
def _backward_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    causal: bool,
    window_left: int,
    window_right: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from flash_attn.cute.interface import _flash_attn_bwd

    if lse.dim() != 3:
        raise RuntimeError("FlashAttention-4's backward needs the forward's log-sum-exp; the forward ran without "
                           "autograd recording it (call `attention` with inputs that require grad)")
    wl, wr = _checked_window(q, k, v, causal, *window_sides(window_left, window_right))
    dq, dk, dv = _kernel_layout(q), _kernel_layout(k), _kernel_layout(v)
    _flash_attn_bwd(_heads_second(q), _heads_second(k), _heads_second(v), _heads_second(out), _heads_second(grad_out),
                    lse, softmax_scale=scale, causal=causal, window_size_left=wl, window_size_right=wr,
                    dq=_heads_second(dq), dk=_heads_second(dk), dv=_heads_second(dv))
    return dq, dk, dv


@_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, scale, causal, window_left, window_right):
    return _kernel_layout(q), _kernel_layout(k), _kernel_layout(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, scale, causal, window_left, window_right, _ = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1])
    ctx.params = (scale, causal, window_left, window_right)
    ctx.set_materialize_grads(False)  # the log-sum-exp gets no gradient: no zeros made for it


def _gradients(ctx, grad_out, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = _backward_op(grad_out, q, k, v, out, lse, *ctx.params)
    return dq, dk, dv, None, None, None, None, None


torch.library.register_autograd("hf_efficient_attn::fa4_attention", _gradients, setup_context=_setup_context)
