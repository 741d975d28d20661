"""cuDNN's fused attention (the SDPA graph of ``nvidia-cudnn-frontend``, import name ``cudnn``) as a backend.

Install with ``pip install 'hf-efficient-attn[cudnn]'``. On Hopper cuDNN runs FlashAttention-3-class kernels
for causal attention, diagonal bands (sliding windows, bidirectional bands) and key padding, forward and
backward, with grouped-query attention through fewer key/value heads. It runs no sinks, no global tokens and
no block layouts of ours: `supports` refuses them and the Triton kernels keep them.

The window mapping
------------------
Our window is the kernels' (`fused_path.KernelMask`): query ``i`` sits at position ``p = i + (k_len - q_len)``
in a causal call (the queries are the last tokens, as when a cache precedes them) and ``p = i`` otherwise, and
sees key ``j`` when::

    (not causal or j <= p)  and  (left is None or p - j < left)  and  (right is None or j - p < right)
    and  j < key_lengths[b]                         (when key lengths are given)

cuDNN's documented band (``docs/operations/Attention.md``, and the reference of its ``test_mhas.py``): with a
diagonal at ``d = i`` (``TOP_LEFT``) or ``d = i + (seq_len_kv[b] - seq_len_q[b])`` (``BOTTOM_RIGHT``, taken
from the lengths of the padding mask when there is one, else from the tensors), a right bound ``r`` masks the
columns ``j > d + r`` and a left bound ``l`` masks the columns ``j <= d - l``; the padding mask hides keys
``j >= seq_len_kv[b]`` and queries ``i >= seq_len_q[b]``. We pass ``seq_len_q = q_len`` (every query is real)
and ``seq_len_kv = key_lengths``.

Both are bands around a diagonal, so the mapping (`cudnn_band`) is arithmetic. Write ours as
``p - left < j <= p + top`` with ``top = right - 1`` (bidirectional) or ``min(0, right - 1)`` (causal; 0 when
``right`` is None) and ``p = i + shift``, ``shift = k_len - q_len`` (causal) or 0. Then:

* ``TOP_LEFT`` (``d = i``): ``r = shift + top``, ``l = left - shift``;
* ``BOTTOM_RIGHT`` (``d = i + k_len - q_len``), only without key lengths (with them cuDNN moves this diagonal
  with each row's length, ours stays put): ``r = top - (k_len - q_len - shift)``,
  ``l = left + (k_len - q_len - shift)``; for a causal call that is simply ``r = top``, ``l = left``;
* a side that masks nothing in this call is dropped first (``shift + top >= k_len - 1``,
  ``left > q_len - 1 + shift``), so a window wider than the call runs cuDNN's unmasked kernel, and a left
  bound whose right side is unbounded gets a right bound that masks nothing (cuDNN takes a left bound only
  with a right bound);
* a candidate is valid when ``r >= 0`` and ``l >= 1`` (cuDNN's ranges), with ``q_len <= k_len`` for a left
  bound (cuDNN runs sliding windows with ``s_q <= s_kv``; we ask it of padded calls too) and for
  ``BOTTOM_RIGHT``. ``BOTTOM_RIGHT`` is taken where it gives a real causal mask (``r = 0``) and ``TOP_LEFT``
  does not (caches), ``TOP_LEFT`` otherwise; with neither valid the call is refused with the bounds it
  would need. Refused, for example: causal calls with more queries than keys (the first queries see nothing),
  ``left = 0`` or ``right = 0`` where no shift makes up for it, and causal windows with key lengths whose
  ``left <= k_len - q_len``.

Worked example: a decoding chunk of ``q_len = 4`` queries after a cache, ``k_len = 10`` keys, causal, window
``(left=3, right=None)``. The queries sit at ``p = 6, 7, 8, 9``; query ``i`` sees ``j <= i + 6`` and
``i + 6 - j < 3``: keys ``{i+4, i+5, i+6}`` (query 0: keys 4, 5, 6; query 3: keys 7, 8, 9). cuDNN gets
``BOTTOM_RIGHT, r = 0, l = 3``: its diagonal is ``d = i + (10 - 4) = i + 6``; ``r = 0`` masks ``j > i + 6``,
``l = 3`` masks ``j <= i + 3``, leaving ``{i+4, i+5, i+6}``. With key lengths the same call needs
``l = 3 - 6 < 1`` and is refused; with ``left=8`` it becomes ``TOP_LEFT, r = 6, l = 2``: cuDNN keeps
``i - 2 < j <= i + 6``, ours ``i + 6 - j < 8`` and ``j <= i + 6``, the same keys, and keys at or past a row's
length are hidden in both. A bidirectional band ``(2, 2)`` (``|i - j| < 2``) is ``TOP_LEFT, l = 2, r = 1``.

Rows that see no key (only possible through key lengths, e.g. a length of 0) return zeros and
gradients of zero, whatever cuDNN leaves there: the op clears them (and the gradients of padded keys)
from the lengths on the device.

Graphs and the op
-----------------
A cuDNN graph is built for each combination of shapes, strides, dtype, scale and mask, which costs milliseconds
(the frontend's heuristics, then the plan build), so built graphs are kept in a least-recently-used cache of
`GRAPH_CACHE_SIZE` entries (`graph_cache_info` lists them with their build times); the first call of a new
shape pays the build, later calls only the launch. Workspaces are allocated through torch's caching allocator
per call. Each device has one cuDNN handle per thread (handles are not thread-safe), bound to torch's current
stream before every launch, so the op runs on the stream torch is on (and inside CUDA-graph capture, once the
shape's graph is built outside it).

`attention` calls the custom op ``hf_efficient_attn::cudnn_sdpa`` (output and the softmax statistics, the
natural-log log-sum-exp cuDNN returns), whose autograd runs ``hf_efficient_attn::cudnn_sdpa_backward`` with
the saved statistics; both have fake implementations, so ``torch.compile(fullgraph=True)`` and CUDA graphs
see single operations. Outputs and gradients are contiguous ``[batch, heads, len, head_dim]`` tensors.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import torch

from ..grad_mode import records_grad
from ..op_window import window_bounds, window_sides
from .operands import operand_refusal

MIN_BACKEND_VERSION = 91002
"""Oldest cuDNN backend (9.10.2) taken: before 9.10 Hopper refuses left + right bounds with bottom-right
alignment, and 9.10.0 / 9.10.1 refuse fp16/bf16 SDPA for known bugs."""

GRAPH_CACHE_SIZE = 64
"""Built graphs kept (forward and backward count separately); the least recently used goes first."""

MAX_HEAD_DIM = 128
MAX_HEAD_DIM_HOPPER = 256
"""cuDNN's support matrix (9.18): head dims up to 256 on Hopper (forward and backward), 128 elsewhere
for the backward and decoding; multiples of 8."""

_find_spec = importlib.util.find_spec


# --------------------------------------------------------------------------------------------------
# availability
# --------------------------------------------------------------------------------------------------


def _version_text(version: int) -> str:
    return f"{version // 10000}.{version % 10000 // 100}.{version % 100}"


@functools.cache
def unavailable_reason() -> str | None:
    """None when cuDNN attention can run here, else why not (package, CUDA, backend version). Never raises;
    the answer is kept for the process (``unavailable_reason.cache_clear()`` asks again)."""
    try:
        if _find_spec("cudnn") is None:
            return ("nvidia-cudnn-frontend is not installed (no module 'cudnn'); install it with "
                    "`pip install 'hf-efficient-attn[cudnn]'`")
        if not torch.cuda.is_available():
            return "CUDA is not available: cuDNN attention runs on NVIDIA GPUs only"
        import cudnn

        version = int(cudnn.backend_version())
    except Exception as exc:  # a probe must never raise
        return f"nvidia-cudnn-frontend could not be loaded ({type(exc).__name__}: {exc})"
    if version < MIN_BACKEND_VERSION:
        return (f"the cuDNN backend is {_version_text(version)}; the diagonal bands and the fp16/bf16 backward "
                f"need {_version_text(MIN_BACKEND_VERSION)} or newer (upgrade the nvidia-cudnn wheel torch uses)")
    return None


def available() -> bool:
    """Whether the package imports, CUDA is there and the cuDNN backend is recent enough. Never raises."""
    return unavailable_reason() is None


def backend_version() -> int | None:
    """The cuDNN backend version as cuDNN writes it (91900 for 9.19.0), or None where unavailable."""
    if not available():
        return None
    import cudnn

    return int(cudnn.backend_version())


# --------------------------------------------------------------------------------------------------
# the window mapping (pure: ints in, cuDNN's arguments out)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Band:
    """cuDNN's diagonal mask for one call: no mask (``alignment`` None), or the diagonal's alignment with
    ``left_bound`` (columns ``j <= d - left_bound`` masked; None: none) and ``right_bound`` (columns
    ``j > d + right_bound`` masked)."""

    alignment: Literal["top_left", "bottom_right"] | None = None
    left_bound: int | None = None
    right_bound: int | None = None


def _side_reason(name: str, side: object) -> str | None:
    if side is None or (isinstance(side, int) and not isinstance(side, bool) and side >= 0):
        return None
    return f"{name} must be None or an int >= 0, got {side!r}"


def cudnn_band(causal: bool, window_left: int | None, window_right: int | None, q_len: int, k_len: int, *,
               padded: bool) -> Band | str:
    """cuDNN's diagonal mask that lets exactly our pairs through (see the module docstring), or why there is
    none. ``padded``: key lengths go to cuDNN's padding mask (which moves a bottom-right diagonal per row)."""
    reason = _side_reason("window_left", window_left) or _side_reason("window_right", window_right)
    if reason:
        return reason
    if q_len < 1 or k_len < 1:
        return f"the call has {q_len} queries and {k_len} keys; cuDNN attention needs at least one of each"
    if causal and q_len > k_len:
        return (f"causal attention with more queries ({q_len}) than keys ({k_len}): the first queries see no "
                "key, which no cuDNN diagonal expresses")
    shift = k_len - q_len if causal else 0
    top = None if window_right is None else window_right - 1
    if causal:
        top = 0 if top is None else min(top, 0)
    if top is not None and shift + top >= k_len - 1:
        top = None
    left = window_left if window_left is not None and window_left <= q_len - 1 + shift else None
    if top is None and left is None:
        return Band()
    top_left = _valid_band("top_left", left, top, shift, q_len, k_len)
    bottom_right = None if padded else _valid_band("bottom_right", left, top, shift, q_len, k_len)
    if bottom_right is not None and bottom_right.right_bound == 0 and (top_left is None or top_left.right_bound):
        return bottom_right
    if top_left is not None or bottom_right is not None:
        return top_left or bottom_right
    kind = "causal" if causal else "bidirectional"
    needed = _bounds("top_left", left, top, shift, q_len, k_len)
    why = f"top-left it needs left bound {needed[0]} and right bound {needed[1]}"
    if padded:
        why += ("; bottom-right is out with key_lengths (cuDNN moves that diagonal with each row's length); pass no "
                "key_lengths or a wider window_left")
    else:
        needed = _bounds("bottom_right", left, top, shift, q_len, k_len)
        why += f", bottom-right left bound {needed[0]} and right bound {needed[1]}"
    return (f"no cuDNN diagonal band gives exactly window=({window_left}, {window_right}) {kind} with {q_len} "
            f"queries and {k_len} keys: {why} (cuDNN takes left >= 1 and right >= 0, and sliding windows and "
            "bottom-right alignment with q_len <= k_len)")


def _bounds(alignment: str, left: int | None, top: int | None, shift: int, q_len: int,
            k_len: int) -> tuple[int | None, int]:
    """(left bound, right bound) of ``alignment`` for our ``p - left < j <= p + top`` with ``p = i + shift``
    (a None side masks nothing; cuDNN then gets a right bound past every key, or no left bound)."""
    diagonal = 0 if alignment == "top_left" else k_len - q_len  # cuDNN's d = i + diagonal
    offset = shift - diagonal  # our p = d + offset
    right = (k_len - 1 - diagonal) if top is None else offset + top
    return (None if left is None else left - offset), right


def _valid_band(alignment: str, left: int | None, top: int | None, shift: int, q_len: int,
                k_len: int) -> Band | None:
    """The band of ``alignment`` (see `_bounds`), or None where cuDNN does not take it."""
    left_bound, right_bound = _bounds(alignment, left, top, shift, q_len, k_len)
    if right_bound < 0 or (left_bound is not None and left_bound < 1):
        return None
    if q_len > k_len and (left_bound is not None or alignment == "bottom_right"):
        return None
    return Band(alignment, left_bound, right_bound)


def visible_rows(q_len: int, k_len: int, causal: bool, window_left: int | None, window_right: int | None,
                 key_lengths: torch.Tensor) -> torch.Tensor:
    """Bool ``[batch, q_len]``: which queries see at least one key under our window and the key lengths
    (computed on the lengths' device, never read on the host)."""
    device = key_lengths.device
    position = torch.arange(q_len, device=device) + (k_len - q_len if causal else 0)
    first = torch.zeros_like(position) if window_left is None else (position - window_left + 1).clamp_min(0)
    last = torch.full_like(position, k_len - 1)
    if causal:
        last = torch.minimum(last, position)
    if window_right is not None:
        last = torch.minimum(last, position + window_right - 1)
    last = torch.minimum(last[None, :], key_lengths.to(torch.long)[:, None] - 1)
    return first[None, :] <= last


# --------------------------------------------------------------------------------------------------
# what runs
# --------------------------------------------------------------------------------------------------


def _head_dim_limit(device: torch.device) -> int:
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9:
        return MAX_HEAD_DIM_HOPPER
    return MAX_HEAD_DIM


def supports(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    causal: bool,
    window_left: int | None = None,
    window_right: int | None = None,
    key_lengths: torch.Tensor | None = None,
    needs_grad: bool = False,
) -> str | None:
    """None when `attention` computes this call exactly, else the reason why not. Reads shapes, dtypes,
    devices and the flags only (never tensor values), so it is safe under tracing.

    ``key_lengths``: int tensor ``[batch]``; key ``j`` of row ``b`` is visible only when
    ``j < key_lengths[b]`` (right padding of the keys). ``needs_grad``: the backward will run too. Sinks,
    global tokens and block layouts are not among its arguments: the dispatch rule refuses them from the
    capability table (`capabilities.CUDNN`) before asking.
    """
    reason = operand_refusal(query, key, value, "cuDNN attention")
    if reason is not None:
        return reason
    batch, q_heads, q_len, head_dim = query.shape
    k_len = key.shape[2]
    limit = _head_dim_limit(query.device)
    if head_dim % 8 or head_dim > limit:
        return f"head_dim={head_dim}: cuDNN attention needs a multiple of 8 up to {limit} on this device"
    if batch == 0 or q_heads == 0:
        return f"the call is empty (batch {batch}, heads {q_heads})"
    band = cudnn_band(causal, window_left, window_right, q_len, k_len, padded=key_lengths is not None)
    if isinstance(band, str):
        return band
    if key_lengths is not None:
        if not isinstance(key_lengths, torch.Tensor) or key_lengths.dim() != 1 or key_lengths.shape[0] != batch:
            shape = tuple(key_lengths.shape) if isinstance(key_lengths, torch.Tensor) else type(key_lengths).__name__
            return f"key_lengths must be an int tensor of shape [batch] = [{batch}], got {shape}"
        if key_lengths.dtype not in (torch.int32, torch.int64):
            return f"key_lengths.dtype={key_lengths.dtype}; pass int32 or int64 lengths"
    if needs_grad and q_len == 1 and k_len == 1:
        return "one query against one key: cuDNN's backward does not take s_q = s_kv = 1"
    devices = {t.device for t in (query, key, value)} | ({key_lengths.device} if key_lengths is not None else set())
    if len(devices) > 1:
        return f"the tensors are on different devices ({sorted(map(str, devices))}); move them to one GPU"
    if query.device.type != "cuda":
        return f"the tensors are on '{query.device}'; cuDNN attention runs CUDA tensors only"
    reason = unavailable_reason()
    if reason:
        return reason
    if backend_version() == 91400 and k_len > 1024 and band.left_bound is not None and band.right_bound != 0:
        return "cuDNN 9.14.0 has a known bug with bidirectional sliding windows over more than 1024 keys; upgrade cuDNN"
    return None


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scale: float,
    causal: bool,
    window_left: int | None = None,
    window_right: int | None = None,
    key_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention ``[batch, q_heads, q_len, head_dim]`` on cuDNN, under our window (see the module
    docstring) and the optional key lengths (``[batch]`` ints: keys at or past a row's length are hidden).

    query ``[batch, q_heads, q_len, head_dim]``, key and value ``[batch, kv_heads, k_len, head_dim]`` with
    ``q_heads % kv_heads == 0``. Differentiable in query, key and value; the softmax statistics are kept for
    the backward only when autograd records the call. Raises `ValueError` with `supports`' reason for a call
    it cannot run.
    """
    need_stats = records_grad(query, key, value)
    out, _ = _sdpa_op(query, key, value, key_lengths, float(scale), bool(causal),
                      *window_bounds(window_left, window_right), need_stats)
    return out


# --------------------------------------------------------------------------------------------------
# the custom ops
# --------------------------------------------------------------------------------------------------


def _checked_band(q, k, v, key_lengths, causal, left, right, needs_grad) -> Band:
    reason = supports(q, k, v, causal=causal, window_left=left, window_right=right, key_lengths=key_lengths,
                      needs_grad=needs_grad)
    if reason is not None:
        raise ValueError(f"cuDNN attention cannot run this call: {reason}")
    return cudnn_band(causal, left, right, q.shape[2], k.shape[2], padded=key_lengths is not None)


def _operand(t: torch.Tensor) -> torch.Tensor:
    """``t`` as cuDNN takes it: unit stride on the head dim, no broadcast dims, a 16-byte aligned base."""
    broadcast = any(stride == 0 and size > 1 for stride, size in zip(t.stride(), t.shape, strict=True))
    if t.stride(-1) != 1 or broadcast or t.data_ptr() % 16:
        return t.clone(memory_format=torch.contiguous_format)
    return t


def _lengths(key_lengths: torch.Tensor, q_len: int, k_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cuDNN's padding-mask operands: every query real, the key lengths clamped to the keys."""
    batch = key_lengths.shape[0]
    seq_q = torch.full((batch, 1, 1, 1), q_len, dtype=torch.int32, device=key_lengths.device)
    seq_kv = key_lengths.clamp(0, k_len).to(torch.int32).reshape(batch, 1, 1, 1).contiguous()
    return seq_q, seq_kv


@torch.library.custom_op("hf_efficient_attn::cudnn_sdpa", mutates_args=())
def _sdpa_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_lengths: torch.Tensor | None,
    scale: float,
    causal: bool,
    window_left: int,
    window_right: int,
    need_stats: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    left, right = window_sides(window_left, window_right)
    band = _checked_band(q, k, v, key_lengths, causal, left, right, need_stats)
    q, k, v = _operand(q), _operand(k), _operand(v)
    batch, heads, q_len, dim = q.shape
    k_len = k.shape[2]
    out = torch.empty((batch, heads, q_len, dim), dtype=q.dtype, device=q.device)
    stats = (torch.empty((batch, heads, q_len, 1), dtype=torch.float32, device=q.device) if need_stats
             else q.new_empty((0,), dtype=torch.float32))
    padded = key_lengths is not None
    key = ("forward", q.device, q.dtype, q.shape, k.shape, q.stride(), k.stride(), v.stride(), scale, band, padded,
           need_stats)
    tensors = {_Uid.Q: q, _Uid.K: k, _Uid.V: v, _Uid.OUT: out}
    if need_stats:
        tensors[_Uid.STATS] = stats
    if padded:
        tensors[_Uid.SEQ_Q], tensors[_Uid.SEQ_KV] = _lengths(key_lengths, q_len, k_len)
    _execute(key, lambda handle: _forward_graph(handle, q, k, v, scale, band, padded, need_stats), tensors, q.device)
    if padded:
        empty = ~visible_rows(q_len, k_len, causal, left, right, key_lengths)[:, None, :, None]
        out.masked_fill_(empty, 0.0)
        if need_stats:
            stats.masked_fill_(empty, math.inf)  # the backward then recomputes p = exp(s - inf) = 0
    return out, stats


@_sdpa_op.register_fake
def _(q, k, v, key_lengths, scale, causal, window_left, window_right, need_stats):
    batch, heads, q_len, _ = q.shape
    stats = q.new_empty((batch, heads, q_len, 1) if need_stats else (0,), dtype=torch.float32)
    return torch.empty_like(q, memory_format=torch.contiguous_format), stats


@torch.library.custom_op("hf_efficient_attn::cudnn_sdpa_backward", mutates_args=())
def _sdpa_backward_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    stats: torch.Tensor,
    key_lengths: torch.Tensor | None,
    scale: float,
    causal: bool,
    window_left: int,
    window_right: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if stats.dim() != 4:
        raise RuntimeError("cuDNN attention's backward needs the forward's softmax statistics; the forward ran "
                           "without autograd recording it (call `attention` with inputs that require grad)")
    left, right = window_sides(window_left, window_right)
    band = _checked_band(q, k, v, key_lengths, causal, left, right, True)
    q, k, v, out, grad_out = (_operand(t) for t in (q, k, v, out, grad_out))
    q_len, k_len = q.shape[2], k.shape[2]
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    padded = key_lengths is not None
    key = ("backward", q.device, q.dtype, q.shape, k.shape, q.stride(), k.stride(), v.stride(), out.stride(),
           grad_out.stride(), scale, band, padded)
    tensors = {_Uid.Q: q, _Uid.K: k, _Uid.V: v, _Uid.OUT: out, _Uid.DO: grad_out, _Uid.STATS: stats.contiguous(),
               _Uid.DQ: dq, _Uid.DK: dk, _Uid.DV: dv}
    if padded:
        tensors[_Uid.SEQ_Q], tensors[_Uid.SEQ_KV] = _lengths(key_lengths, q_len, k_len)
    _execute(key, lambda handle: _backward_graph(handle, q, k, v, out, grad_out, scale, band, padded), tensors,
             q.device)
    if padded:
        dq.masked_fill_(~visible_rows(q_len, k_len, causal, left, right, key_lengths)[:, None, :, None], 0.0)
        hidden = torch.arange(k_len, device=k.device)[None, :] >= key_lengths.to(torch.long)[:, None]
        dk.masked_fill_(hidden[:, None, :, None], 0.0)
        dv.masked_fill_(hidden[:, None, :, None], 0.0)
    return dq, dk, dv


@_sdpa_backward_op.register_fake
def _(grad_out, q, k, v, out, stats, key_lengths, scale, causal, window_left, window_right):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, key_lengths, scale, causal, window_left, window_right, _ = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], key_lengths)
    ctx.params = (scale, causal, window_left, window_right)
    ctx.set_materialize_grads(False)  # the statistics get no gradient: no zeros made for them


def _gradients(ctx, grad_out, _grad_stats):
    q, k, v, out, stats, key_lengths = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = _sdpa_backward_op(grad_out, q, k, v, out, stats, key_lengths, *ctx.params)
    return dq, dk, dv, None, None, None, None, None, None


torch.library.register_autograd("hf_efficient_attn::cudnn_sdpa", _gradients, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------
# graphs
# --------------------------------------------------------------------------------------------------


class _Uid:
    Q, K, V, OUT, STATS, DO, DQ, DK, DV, SEQ_Q, SEQ_KV = range(1, 12)


@dataclass
class _Graph:
    graph: object
    workspace_bytes: int
    build_ms: float


_GRAPHS: OrderedDict[tuple, _Graph] = OrderedDict()
_GRAPHS_LOCK = threading.Lock()
_LOCAL = threading.local()


def graph_cache_info() -> list[dict]:
    """The built graphs, least recently used first: kind, q and k shapes, build milliseconds, workspace."""
    with _GRAPHS_LOCK:
        return [{"kind": key[0], "q_shape": tuple(key[3]), "k_shape": tuple(key[4]),
                 "band": next(part for part in key if isinstance(part, Band)), "build_ms": round(entry.build_ms, 2),
                 "workspace_bytes": entry.workspace_bytes} for key, entry in _GRAPHS.items()]


def clear_graph_cache() -> None:
    """Drop every built graph (the next call of each shape builds again)."""
    with _GRAPHS_LOCK:
        _GRAPHS.clear()


def _handle(device: torch.device):
    """This thread's cuDNN handle for ``device``, bound to torch's current stream there."""
    import cudnn

    index = device.index if device.index is not None else torch.cuda.current_device()
    handles = _LOCAL.__dict__.setdefault("handles", {})
    handle = handles.get(index)
    if handle is None:
        with torch.cuda.device(index):
            handle = handles[index] = cudnn.create_handle()
    cudnn.set_stream(handle, torch.cuda.current_stream(index).cuda_stream)
    return handle


def _execute(key: tuple, build, tensors: dict, device: torch.device) -> None:
    handle = _handle(device)
    with _GRAPHS_LOCK:
        entry = _GRAPHS.get(key)
        if entry is None:
            start = time.perf_counter()
            graph = build(handle)
            entry = _Graph(graph, int(graph.get_workspace_size()), (time.perf_counter() - start) * 1e3)
            _GRAPHS[key] = entry
            while len(_GRAPHS) > GRAPH_CACHE_SIZE:
                _GRAPHS.popitem(last=False)
        else:
            _GRAPHS.move_to_end(key)
    workspace = torch.empty(max(entry.workspace_bytes, 1), dtype=torch.uint8, device=device)
    entry.graph.execute(tensors, workspace, handle=handle)


def _new_graph(handle, dtype: torch.dtype):
    import cudnn

    io = cudnn.data_type.HALF if dtype == torch.float16 else cudnn.data_type.BFLOAT16
    graph = cudnn.pygraph(io_data_type=io, intermediate_data_type=cudnn.data_type.FLOAT,
                          compute_data_type=cudnn.data_type.FLOAT, handle=handle)
    return graph, io


def _declare(graph, io, uid: int, name: str, t: torch.Tensor):
    return graph.tensor(name=name, dim=list(t.shape), stride=list(t.stride()), data_type=io, uid=uid)


def _mask_arguments(graph, band: Band, padded: bool, batch: int) -> dict:
    """The sdpa / sdpa_backward keyword arguments of the band and the padding mask."""
    import cudnn

    arguments = {}
    if band.alignment is not None:
        arguments["diagonal_alignment"] = (cudnn.diagonal_alignment.BOTTOM_RIGHT if band.alignment == "bottom_right"
                                           else cudnn.diagonal_alignment.TOP_LEFT)
        arguments["diagonal_band_right_bound"] = band.right_bound
        if band.left_bound is not None:
            arguments["diagonal_band_left_bound"] = band.left_bound
    if padded:
        lengths = {"dim": [batch, 1, 1, 1], "stride": [1, 1, 1, 1], "data_type": cudnn.data_type.INT32}
        arguments["use_padding_mask"] = True
        arguments["seq_len_q"] = graph.tensor(name="seq_len_q", uid=_Uid.SEQ_Q, **lengths)
        arguments["seq_len_kv"] = graph.tensor(name="seq_len_kv", uid=_Uid.SEQ_KV, **lengths)
    return arguments


def _output(t, uid: int, shape: list[int], data_type) -> None:
    """Mark an op's output as a contiguous graph output of ``shape``."""
    stride = [math.prod(shape[i + 1:]) for i in range(len(shape))]
    t.set_uid(uid).set_output(True).set_dim(shape).set_stride(stride).set_data_type(data_type)


def _build(graph):
    import cudnn

    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.check_support()
    graph.build_plans()
    return graph


def _forward_graph(handle, q, k, v, scale: float, band: Band, padded: bool, need_stats: bool):
    import cudnn

    graph, io = _new_graph(handle, q.dtype)
    o, stats = graph.sdpa(
        name="sdpa", q=_declare(graph, io, _Uid.Q, "q", q), k=_declare(graph, io, _Uid.K, "k", k),
        v=_declare(graph, io, _Uid.V, "v", v), attn_scale=scale, generate_stats=need_stats,
        **_mask_arguments(graph, band, padded, q.shape[0]),
    )
    _output(o, _Uid.OUT, list(q.shape), io)
    if need_stats:
        _output(stats, _Uid.STATS, [*q.shape[:3], 1], cudnn.data_type.FLOAT)
    return _build(graph)


def _backward_graph(handle, q, k, v, out, grad_out, scale: float, band: Band, padded: bool):
    import cudnn

    graph, io = _new_graph(handle, q.dtype)
    batch, heads, q_len, _ = q.shape
    stats = graph.tensor(name="stats", dim=[batch, heads, q_len, 1], stride=[heads * q_len, q_len, 1, 1],
                         data_type=cudnn.data_type.FLOAT, uid=_Uid.STATS)
    dq, dk, dv = graph.sdpa_backward(
        name="sdpa_backward", q=_declare(graph, io, _Uid.Q, "q", q), k=_declare(graph, io, _Uid.K, "k", k),
        v=_declare(graph, io, _Uid.V, "v", v), o=_declare(graph, io, _Uid.OUT, "o", out),
        dO=_declare(graph, io, _Uid.DO, "dO", grad_out), stats=stats, attn_scale=scale,
        **_mask_arguments(graph, band, padded, batch),
    )
    _output(dq, _Uid.DQ, list(q.shape), io)
    _output(dk, _Uid.DK, list(k.shape), io)
    _output(dv, _Uid.DV, list(v.shape), io)
    return _build(graph)


__all__ = ["Band", "attention", "available", "backend_version", "clear_graph_cache", "cudnn_band",
           "graph_cache_info", "supports", "unavailable_reason", "visible_rows"]
