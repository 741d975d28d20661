"""Whether torch's SDPA runs a call under a mask on a fused kernel, grouped-query heads included.

A decoding step over a static cache needs a mask (causality by position: the slots ahead of the newest
token are unwritten), and with grouped-query heads transformers repeats the keys per query head for it.
Where SDPA has a fused kernel for the masked grouped call (cuDNN's attention takes masks and grouped
heads on Hopper with torch 2.11), passing the key/value heads as they are is far faster: measured on the
H200 (Llama-1B heads 32/8, head_dim 64, bf16, 16 layers under CUDA graphs, us per layer), masked SDPA
with ``enable_gqa`` took 15 / 29 / 48 / 297 us at batch 1 x 4k, 1 x 32k, 16 x 4k and 16 x 32k keys,
against 58 / 354 / 702 / 5302 with the keys repeated (transformers' call) and 30 / 54 / 75 / 390 on our
split-key decode kernel. Where no fused kernel takes it, SDPA would fall back to its math kernel, which
materialises the scores: then the keys are repeated (or the decode kernel runs), as before.

torch says which backends can take a call (`torch.backends.cuda.can_use_cudnn_attention` and friends)
from the call's metadata. That answer depends on the device, dtype, head counts, head size, one query or
several and the mask's broadcast, so it is probed once per combination on small tensors and kept; under
``torch.compile`` the probe runs while tracing and its answer is a constant of the graph
(`torch.compiler.assume_constant_result`), so the traced path has no branch on tensor data.

cuDNN's attention builds a graph for every shape it has not seen (tens of milliseconds on the H100's
host), which is why calls of shapes SDPA has not met (decoding over a growing cache at every step, a
prompt the first time its shape is planned: `dispatch.leaves_cudnn_out`) run SDPA with cuDNN switched off
(`without_cudnn`): its FlashAttention and memory-efficient kernels need no such step. `ShapeTally`
records which shapes a process has met.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch


def fuses_masked_call(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor, dropout: float = 0.0) -> bool:
    """Whether SDPA runs ``query`` under the boolean ``mask`` (``[b|1, h|1, q, k]``) on a fused CUDA kernel,
    against the mask's ``k`` keys with ``key``'s key/value heads as they are (``enable_gqa`` where they are
    fewer). Only ``key``'s head count is read: a planned call asks before it gathers its candidate keys."""
    if not query.is_cuda:
        return False
    return _probe(query.device.index or 0, query.dtype, probe_sizes(query, key, mask), mask.dtype, dropout > 0)


PROBE_QUERIES, PROBE_KEYS = 64, 256
"""The lengths the probe asks about (`probe_sizes`)."""


def probe_sizes(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor) -> tuple[int, ...]:
    """The sizes the probe asks about: the heads, the head size, one query or several and how the mask
    broadcasts, which decide whether a fused kernel takes a masked grouped call, with the lengths fixed
    (`PROBE_QUERIES`, `PROBE_KEYS`). Under ``torch.compile`` a length that changed between calls is a
    symbol, which `torch.compiler.assume_constant_result` cannot take (and which reading it would
    specialise); the fixed lengths keep the probe a constant for every length."""
    q_heads, q_len, head_dim = query.shape[1:]
    mask_heads, mask_queries, mask_keys = mask.shape[1:]
    queries = 1 if q_len == 1 else PROBE_QUERIES
    return (q_heads, queries, head_dim, key.shape[1], PROBE_KEYS, mask_heads, 1 if mask_queries == 1 else queries,
            1 if mask_keys == 1 else PROBE_KEYS)


@torch.compiler.assume_constant_result
def _probe(device_index: int, dtype: torch.dtype, sizes: tuple[int, ...], mask_dtype: torch.dtype,
           dropout: bool) -> bool:
    return _probe_cached(device_index, dtype, sizes, mask_dtype, dropout)


@functools.lru_cache(maxsize=256)
def _probe_cached(device_index: int, dtype: torch.dtype, sizes: tuple[int, ...], mask_dtype: torch.dtype,
                  dropout: bool) -> bool:
    from torch.backends import cuda

    q_heads, q_len, head_dim, kv_heads, k_len, *mask_shape = sizes
    device = torch.device("cuda", device_index)
    query = torch.empty(1, q_heads, q_len, head_dim, dtype=dtype, device=device)
    key = torch.empty(1, kv_heads, k_len, head_dim, dtype=dtype, device=device)
    mask = torch.empty([1, *mask_shape], dtype=mask_dtype, device=device)
    params = cuda.SDPAParams(query, key, key, mask, 0.1 if dropout else 0.0, False, kv_heads != q_heads)
    checks = [getattr(cuda, name) for name in ("can_use_cudnn_attention", "can_use_efficient_attention",
                                               "can_use_flash_attention") if hasattr(cuda, name)]
    return any(check(params, False) for check in checks)


def without_cudnn(attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
                  ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``attend`` with SDPA's cuDNN backend switched off during its calls (and on again after, where it was
    on), so SDPA picks FlashAttention or its memory-efficient kernel: for calls of a shape SDPA has not
    met, for which cuDNN would build a graph (`dispatch.leaves_cudnn_out`). Where the caller left SDPA no
    other backend
    (``sdpa_kernel([SDPBackend.CUDNN_ATTENTION])``), cuDNN stays."""
    backends = torch.backends.cuda

    def attend_without_cudnn(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        if not backends.cudnn_sdp_enabled() or not (
            backends.flash_sdp_enabled() or backends.mem_efficient_sdp_enabled() or backends.math_sdp_enabled()
        ):
            return attend(query, key, value)
        backends.enable_cudnn_sdp(False)
        try:
            return attend(query, key, value)
        finally:
            backends.enable_cudnn_sdp(True)

    return attend_without_cudnn


class ShapeTally:
    """How often each key (a call's shapes and flags) was counted, for the last ``capacity`` keys: a
    bounded record of which shapes a process has met, as cuDNN's graph cache keeps them."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._counts: OrderedDict[Hashable, int] = OrderedDict()

    def count(self, key: Hashable) -> int:
        """Count ``key`` once more; how often it has been counted, this time included."""
        seen = self._counts.pop(key, 0) + 1
        self._counts[key] = seen
        if len(self._counts) > self.capacity:
            self._counts.popitem(last=False)
        return seen


def zero_rows_without_keys(output: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``output`` (``[b, h, q, d]``) with zeros in the rows whose query sees no key under the boolean
    ``visible`` (``[b|1, h|1, q, k]``), where SDPA returns NaN or an average of every value instead.

    Compiled for the CPU, the visible keys are counted by a matrix product instead of an ``any`` over them:
    torch 2.11's inductor turns a reduction over the keys of a few rows there (``any`` or ``sum`` alike)
    into a loop that stores a whole vector past its short output (16 values on an AVX-512 host), which
    corrupts the heap of a compiled decoding step; a matrix product is a library call."""
    if visible.device.type == "cpu" and torch.compiler.is_compiling():
        ones = torch.ones(visible.shape[-1], 1, dtype=output.dtype, device=visible.device)
        return output.masked_fill(torch.matmul(visible.to(output.dtype), ones) == 0, 0.0)
    return output.masked_fill(~visible.any(-1, keepdim=True), 0.0)
