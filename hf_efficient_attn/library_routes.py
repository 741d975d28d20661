"""The library backends' routes: when ``backend="auto"`` takes cuDNN's fused attention or FlashAttention-4
for a call, and the refusal and launch of a call on either (``backend="cudnn"`` / ``"fa4"`` forced).

Both are optional (`backends.cudnn_sdpa`, `backends.fa4`, their extras) and both pay a one-time cost per
new shape or configuration (cuDNN builds a graph for every shape, FlashAttention-4 compiles each
configuration), so `"auto"` takes them only from the second planning of what they would build, and only
where measurements show them faster than the route they replace (`picks_cudnn`, `picks_fa4`). The
dispatch rule (`dispatch.choose`) asks these in its order of speed.
"""

from __future__ import annotations

import torch

from . import fused_path, sdpa_support
from .capabilities import CUDNN, FA4, CallNeeds, Need
from .context import AttentionContext, tensor_signature, tracing
from .fused_path import FusedPathError, KernelMask
from .grad_mode import records_grad

SMALL_HEAD_WINDOW_GRAD_MIN_QUERIES = 32768
"""With gradients and head size 64, the fewest queries for which `picks_cudnn` and `picks_fa4` take a window
band off the Triton kernels: below it their forward + backward is slower. On the H200 (bf16, 16 heads,
window 1024, kernel_speed.py) at 16k: cuDNN 0.90x the Triton kernels' speed, FlashAttention-4 0.90x
(benchmarks/results/kernels-h200-fa4); at 64k cuDNN 1.25x."""


def _small_head_backward_loses(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether a windowed call with gradients is one whose backward the Triton kernels run faster than the
    library backends (`SMALL_HEAD_WINDOW_GRAD_MIN_QUERIES`)."""
    return (records_grad(query, key, value) and query.shape[-1] <= 64
            and query.shape[-2] < SMALL_HEAD_WINDOW_GRAD_MIN_QUERIES)


_PLANNED_WINDOWS = sdpa_support.ShapeTally()
"""How often each windowed call's shape was planned in this process, for `picks_cudnn`."""


def picks_cudnn(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    pattern: KernelMask | str,
    needs: CallNeeds | None,
) -> bool:
    """Whether ``backend="auto"`` runs this call on cuDNN's fused attention (`backends.cudnn_sdpa`, the
    ``cudnn`` extra) instead of the Triton kernels: a call of many queries under a window band narrower than
    its keys (no sinks, globals or layout), in eager mode on CUDA, that cuDNN computes exactly
    (`library_refusal`, given the call's ``needs``), at a shape this process has planned before, and with
    gradients only where cuDNN's backward is faster too (head size above 64, or at least
    `SMALL_HEAD_WINDOW_GRAD_MIN_QUERIES` queries).

    On the H200 (torch 2.11, cuDNN 9.19, bf16, 16 heads, window 1024; benchmarks/results/kernels-h200)
    cuDNN's forward ran 1.22-1.47x the Triton kernel's speed at 16k and 64k tokens and head sizes 64 and
    128, and forward + backward 1.25-1.46x, except head size 64 at 16k (0.90x). cuDNN builds a graph for
    every new shape (45 ms on the H100), more than a forward saves, so the first planning of a shape runs
    the Triton kernels and later ones cuDNN, as `leaves_cudnn_out` does for SDPA. Decoding steps (a new
    shape each step) and traced calls keep the Triton kernels."""
    if (
        tracing()
        or isinstance(pattern, str)
        or pattern.window == (None, None)
        or pattern.counts_from_row_start()
        or not fused_path.kernels_preferred(query.device)
        or query.shape[-2] <= fused_path.DECODE_MAX_QUERIES
    ):
        return False
    if _small_head_backward_loses(query, key, value):
        return False
    if library_refusal("cudnn", query, key, value, context, pattern, needs) is not None:
        return False
    return _PLANNED_WINDOWS.count((pattern.window, context.causal, *tensor_signature(query, key, value))) > 1


FA4_WINDOW_MIN_QUERIES = 16384
"""Fewest queries for which `picks_fa4` takes FlashAttention-4 for a window band."""
FA4_EXACT_MIN_QUERIES = 8192
"""Fewest queries for which `picks_fa4` takes FlashAttention-4 for a call SDPA computes exactly."""

_PLANNED_FA4 = sdpa_support.ShapeTally()
"""How often each call's configuration was planned in this process, for `picks_fa4`."""


def picks_fa4(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    pattern: KernelMask | str,
    needs: CallNeeds | None,
) -> bool:
    """Whether ``backend="auto"`` runs this call on FlashAttention-4 (`backends.fa4`, the ``fa4`` extra)
    instead of SDPA, cuDNN or the Triton kernels: a call of at least `FA4_WINDOW_MIN_QUERIES` queries under
    a window band narrower than its keys (no sinks, globals or layout), or of at least
    `FA4_EXACT_MIN_QUERIES` under a causal mask or none (a call SDPA computes exactly), in eager mode on
    CUDA, that FlashAttention-4 computes exactly (`library_refusal`), from the second planning of its
    configuration in this process; a window with gradients at head size 64 only from
    `SMALL_HEAD_WINDOW_GRAD_MIN_QUERIES` queries.

    On the H200 (kernel_speed.py, bf16, 16 heads, 16k and 64k tokens; benchmarks/results/kernels-h200-fa4)
    FlashAttention-4 ran causal attention 1.06-1.25x SDPA-cuDNN's speed forward and 1.09-1.22x forward +
    backward, and a window of 1024 at head size 128 1.56-1.62x FlexAttention's forward and 1.55-1.59x its
    forward + backward (1.05x our cuDNN backend's forward, 1.10x its forward + backward); at head size 64
    the window's forward + backward at 16k ran 0.90x the Triton kernels'.

    Per call on an H100 (torch 2.11, flash-attn-4 4.0.0b40, bf16, Llama-1B heads 32 over 8, head size 64,
    batch 1; forward, forward + backward): causal at 4k, 8k and 16k tokens 1.23 / 1.21 / 1.20x SDPA-cuDNN's
    speed and 1.06 / 1.18 / 1.12x, but at 1k and 2k 0.30 and 0.27x (its host time, 60-80 us a forward
    and more for the backward, outweighs the kernel there); a window of 1024 at 16k 1.14x cuDNN's forward
    and 1.08x its forward + backward, at 4k 0.93x and 0.75x. With 16 heads at 16k (kernel_speed.py,
    benchmarks/results/h100-archive-2026-12/kernels-h100-fa4) the window ran at 339 / 486 TFLOP/s forward (head size 64 / 128)
    against cuDNN's 328 / 375 and the Triton kernels' 272 / 286. The first call of each configuration
    (dtype, heads, head size, mask and window) compiles its kernels, 3-4 s on the H100, which later calls at
    any length reuse: so the first planning of a configuration runs the other backends (a one-off call
    never pays the compile), later ones FlashAttention-4. Traced calls keep the other backends."""
    if tracing() or needs is None or not fused_path.kernels_preferred(query.device):
        return False
    windowed = Need.WINDOW in needs.needs
    if query.shape[-2] < (FA4_WINDOW_MIN_QUERIES if windowed else FA4_EXACT_MIN_QUERIES):
        return False
    if windowed and _small_head_backward_loses(query, key, value):
        return False
    if library_refusal("fa4", query, key, value, context, pattern, needs) is not None:
        return False
    configuration = (pattern.window if windowed else None, context.causal, query.dtype, query.device,
                     query.shape[1], key.shape[1], query.shape[-1], records_grad(query, key, value))
    return _PLANNED_FA4.count(configuration) > 1


LIBRARY_BACKENDS: dict[str, str] = {"cudnn": "cuDNN", "fa4": "FlashAttention-4"}
"""The backends built on libraries below Triton (`backends`), by ``backend=`` name, with how errors name them."""


def _library(name: str):
    """The backend module of a `LIBRARY_BACKENDS` name and its row of the capability table (read when
    asked, so a changed row is the one used)."""
    from .backends import cudnn_sdpa, fa4

    return (cudnn_sdpa, CUDNN) if name == "cudnn" else (fa4, FA4)


def library_refusal(
    name: str,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    pattern: KernelMask | str,
    needs: CallNeeds | None,
) -> str | None:
    """None when the library backend ``name`` (`LIBRARY_BACKENDS`: cuDNN's fused attention,
    `backends.cudnn_sdpa`; FlashAttention-4, `backends.fa4`) computes this call exactly, else why not: its
    availability, its row of the capability table against the call's ``needs`` (None where the pattern is
    the reason it has none), then its own check of shapes and window."""
    if needs is None:
        return pattern
    module, row = _library(name)
    unavailable = module.unavailable_reason()
    if unavailable is not None:
        return unavailable
    refusal = row.refusal(needs)
    if refusal is not None:
        return refusal
    left, right = _band(pattern, needs)
    return module.supports(query, key, value, causal=context.causal, window_left=left, window_right=right,
                           needs_grad=records_grad(query, key, value))


def _band(pattern: KernelMask, needs: CallNeeds) -> tuple[int | None, int | None]:
    """The window a library backend is given: the pattern's where it restricts the call, none where it
    covers every key (the call is then plain attention, which the unbanded kernels run)."""
    return pattern.window if Need.WINDOW in needs.needs else (None, None)


def plan_library(
    name: str,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    pattern: KernelMask | str,
    needs: CallNeeds | None,
    variant_name: str,
) -> fused_path.Launch:
    """The launch of a call on the library backend ``name`` (`LIBRARY_BACKENDS`), or `FusedPathError`
    saying why it cannot run there (``backend="cudnn"`` or ``"fa4"`` forced onto a call it refuses)."""
    reason = library_refusal(name, query, key, value, context, pattern, needs)
    if reason is not None:
        raise FusedPathError(
            f"Variant '{variant_name}' with backend='{name}' cannot run this call on {LIBRARY_BACKENDS[name]}: "
            f"{reason}. Use backend='auto' (an exact path for every call) or backend='triton'."
        )
    return library_launch(name, context, pattern, needs)


def library_launch(name: str, context: AttentionContext, pattern: KernelMask, needs: CallNeeds) -> fused_path.Launch:
    """The launch of a call on the library backend ``name`` that `library_refusal` has accepted (`picks_cudnn`
    and `picks_fa4` ask it, so ``"auto"`` goes straight here)."""
    module, _ = _library(name)
    left, right = _band(pattern, needs)
    causal, scale = context.causal, context.scaling
    return lambda q, k, v: module.attention(q, k, v, scale=scale, causal=causal, window_left=left, window_right=right)
