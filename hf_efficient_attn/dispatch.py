"""Which backend runs one attention call: the one rule, in one place.

`flash`, `sliding` and `sparse` are exact softmax attention under a mask, so several backends compute
them to rounding, and a call goes to the fastest that computes it exactly. Which backends may run a call
is data: each states what it runs exactly (`capabilities`, checked against the call's needs); this
module holds the order of speed among them:

1. **torch SDPA** (cuDNN / FlashAttention / memory-efficient kernels on CUDA, its CPU kernels on the CPU)
   when the variant's pattern imposes nothing on this call beyond what SDPA expresses without a dense mask:
   no mask at all, causal with queries and keys aligned, a window or block layout that covers every key the
   call has, a decoding step over a bounded cache that holds exactly the visible keys, a static cache's step
   (with causality by position as its mask). Padding and a caller's 4-D mask go with it as SDPA's boolean
   mask (what transformers' own SDPA path passes). These are the calls where our kernels would only redo
   SDPA's work. So is a decoding step under a block layout shared by the heads
   (`layout_routes.gathers_visible_keys`, route ``"gather"``): SDPA without a mask over the key blocks its
   layout row allows, gathered by a plan made once per forward (`layout_routes.plan_key_gather`). So is most
   of a bidirectional inference call under a block layout that leaves most block rows whole
   (`layout_routes.splits_whole_rows`, route ``"whole-rows"``, on the CPU: Whisper's encoder under a 99%
   layout): SDPA without a mask over the runs of whole rows, the pattern's dense mask over the other rows
   only. A decoding step over a growing cache on CUDA, and a prompt of a shape met for the first time, leave
   SDPA's cuDNN backend out (`leaves_cudnn_out`): cuDNN would build a graph for the new shape. A call under
   a mask with grouped-query heads passes the key/value heads as they are where SDPA has a fused kernel for
   it (`sdpa_support`: cuDNN on Hopper, 4-18x faster than transformers' repeated keys); where it has none, a
   decoding query under a mask (a static cache's step, by position) runs on our split-key decode kernel on
   CUDA, as it does in the chunked engine (`fused_path.decode_under_key_mask`), and other calls repeat the
   keys. Long causal or unmasked calls go to **FlashAttention-4** instead (`picks_fa4`, where the ``fa4``
   extra is installed, on Hopper), from the second planning of their configuration, where it is faster.
2. **Our Triton kernels** (CUDA) where they save work: windows narrower than the keys, sinks and
   globals, block layouts with skipped tiles, packed documents, and decoding with padding (split-key
   flash-decoding with a key mask, which SDPA's fast kernels do not take). A window band alone goes to
   **FlashAttention-4** (`picks_fa4`) or **cuDNN's fused attention** (`picks_cudnn`, the ``cudnn`` extra)
   instead, where installed, from the second planning of its configuration or shape, where they are
   faster.
3. **SDPA under the pattern's dense mask** where the kernels do not run, for short bidirectional inference
   calls under a block layout that keeps most pairs but leaves few rows whole
   (`layout_routes.masked_sdpa_faster`), where one masked call is faster than the chunked engine.
4. **The chunked engine** (`masked.masked_attention`, SDPA per chunk of queries over the keys the
   pattern allows): everything else. It is the path on the CPU for patterns SDPA cannot express
   without a dense mask, the path of static-cache calls the pattern does not cover (whose positions
   exist on the device only), and the exact fallback on CUDA for calls the kernels cannot take (the
   reason is warned once).

The rule reads only what is known before the call: shapes, dtypes, the device, options, and the host
facts of `AttentionContext`. It never reads tensor values, so the whole path traces under
``torch.compile(fullgraph=True)`` and replays under CUDA graphs.

``backend=`` (per variant) bends it: ``"auto"`` is the rule above; ``"sdpa"`` forces torch's SDPA for the
calls it computes exactly (the pattern restricts nothing: `capabilities.SDPA`) or raises `FusedPathError`
saying why not; ``"triton"`` forces the kernels
(including where SDPA would be exact) or raises `FusedPathError` saying why not (also on the CPU under
``TRITON_INTERPRET=1``); ``"cudnn"`` forces cuDNN's fused attention through nvidia-cudnn-frontend
(`backends.cudnn_sdpa`, the ``cudnn`` extra) for the calls it computes exactly (causal or
bidirectional, windows as diagonal bands, grouped-query heads, forward and backward; no sinks, globals,
block layouts, padding, packed documents, static caches or trimmed caches) or raises `FusedPathError`
saying why not; ``"fa4"`` forces FlashAttention-4 (`backends.fa4`, the ``fa4`` extra, Hopper) likewise;
``"reference"`` always takes the chunked engine.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Literal

import torch

from . import fused_path, layout_routes, sdpa_calls, sdpa_support
from .capabilities import SDPA, TRITON, CallNeeds, call_needs
from .context import AttentionContext, tensor_signature, tracing
from .errors import VariantError
from .fused_path import FusedPathError, FusedPathFallbackWarning, KernelMask
from .grad_mode import records_grad
from .library_routes import LIBRARY_BACKENDS, library_launch, picks_cudnn, picks_fa4, plan_library

Backend = Literal["auto", "sdpa", "triton", "cudnn", "fa4", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "triton", "cudnn", "fa4", "reference")
Route = Literal["sdpa", "gather", "whole-rows", "triton", "cudnn", "fa4", "masked-sdpa", "chunked"]


def check_backend(backend: object) -> None:
    """Raise `VariantError` unless ``backend`` is one of `BACKENDS`."""
    if backend not in BACKENDS:
        raise VariantError(f"`backend` must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}.")


def plan_call(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    *,
    backend: Backend,
    pattern: KernelMask | str,
    reference: Callable[..., torch.Tensor],
    variant_name: str,
    one_mask: Callable[[torch.Tensor, torch.Tensor, AttentionContext], fused_path.Launch] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The call's attention, ``(query, key, value) -> [batch, q_heads, q_len, head_dim]``, on the backend
    the rule picks for it. It reads nothing of the tensors but their shapes, so a forward's later layers
    with the same shapes and context run it on their own tensors (`replay`).

    Args:
        query, key, value, context: as a variant's forward receives them.
        backend: ``"auto"``, ``"sdpa"``, ``"triton"``, ``"cudnn"`` or ``"reference"`` (see the module
            docstring).
        pattern: the variant's pattern in the kernels' terms (`KernelMask`), or the reason it has none.
        reference: ``(query, key, value, decode_kernel=...)`` on the chunked engine; ``decode_kernel``
            says whether a chunk of one query under a mask may run on the decode kernel
            (`masked.masked_attention`).
        variant_name: named in warnings and errors.
        one_mask: ``(query, key, context)`` to the launch of one SDPA call under the pattern's dense mask
            (the chunked engine with a single chunk, `masked.plan_one_masked_call`) for the queries of
            ``context``, its mask made when planned; for variants whose pattern has a kernel, None for the
            others.
    """
    route, run = choose(query, key, value, context, backend, pattern, variant_name, one_mask is not None)
    decode_kernel = _decode_kernel(backend, query.device)
    if route in ("sdpa", "gather"):
        launch = sdpa_calls.sdpa_plan(query, key, context, decode_kernel) if route == "sdpa" else run
        return sdpa_support.without_cudnn(launch) if leaves_cudnn_out(query, key, value, context) else launch
    if route in ("triton", "cudnn", "fa4"):
        return run
    if route == "whole-rows":
        return layout_routes.plan_whole_rows(query, key, context, pattern, one_mask)
    if route == "masked-sdpa":
        return one_mask(query, key, context)
    return functools.partial(reference, decode_kernel=decode_kernel)


UNSEEN_PROMPT_MAX_TOKENS = 8192
"""Longest prompt that runs without cuDNN the first time its shape is planned (`leaves_cudnn_out`)."""

_PLANNED_SHAPES = sdpa_support.ShapeTally()
"""How often each prompt shape was planned in this process, for `leaves_cudnn_out`."""


def leaves_cudnn_out(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext) -> bool:
    """Whether this call, one SDPA takes without a mask (`sdpa_needs_mask`), runs with SDPA's cuDNN
    backend switched off (`sdpa_support.without_cudnn`, so FlashAttention takes it, grouped heads
    included), in eager mode where the kernels run (CUDA): a decoding step over a growing cache (a
    static cache's steps are under a mask), whose shape is new at every step, and a causal prompt of at
    most `UNSEEN_PROMPT_MAX_TOKENS` tokens whose shape this process plans for the first time. Calls
    under a mask keep cuDNN, the one fused kernel for grouped heads under a mask (`sdpa_support`);
    without it SDPA would fall back to its math kernel.

    cuDNN builds a graph for every shape it has not seen. On the H100 (torch 2.11, Llama-1B heads 32
    over 8, head_dim 64, bf16) unpatched decoding after 3000 tokens took 90 ms a step over new lengths
    against 21.6 ms over the same lengths again, and 21.5 ms over new lengths with SDPA's FlashAttention
    and memory-efficient kernels only. The first call at a new prompt length cost 64 ms more than the
    second (median of 24 lengths from 1k to 8k; 715 ms at most), while FlashAttention-2, which needs no
    graph, took 1.6x cuDNN's time at a seen length: 0.099 against 0.061 ms a call at 2k and 1.00 against
    0.65 ms at 8k, so about 6 ms more for 16 layers at 8k, less than the graph. From its second planning
    a prompt's shape has been met and runs on cuDNN, which builds its graph then, once, as the unpatched
    model does at the first; past 8k tokens cuDNN's speed outweighs the graph, training steps repeat
    their shapes, and a compiled step is traced once."""
    if (
        not context.causal
        or tracing()
        or not fused_path.kernels_preferred(query.device)
        or records_grad(query, key, value)
        or sdpa_calls.sdpa_needs_mask(query, key, context)
    ):
        return False
    if query.shape[-2] <= fused_path.DECODE_MAX_QUERIES:
        return True  # a decoding step over a growing cache: a new shape at every step
    if query.shape[-2] > UNSEEN_PROMPT_MAX_TOKENS:
        return False
    return _PLANNED_SHAPES.count(tensor_signature(query, key, value)) == 1


def _decode_kernel(backend: Backend, device: torch.device) -> bool:
    """Whether one decoding query under a mask may run on the split-key decode kernel (not where a
    backend without it is forced)."""
    return backend == "triton" or (backend == "auto" and fused_path.kernels_preferred(device))


def choose(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    backend: Backend,
    pattern: KernelMask | str,
    variant_name: str = "variant",
    one_mask: bool = False,
) -> tuple[Route, fused_path.Launch | None]:
    """The rule: which route runs this call, and for ``"triton"`` the planned launch (see the module
    docstring), for ``"gather"`` and ``"triton"`` the planned launch; ``one_mask`` says whether the variant
    offers the masked-SDPA route. Raises
    `FusedPathError` when ``backend="triton"`` cannot be honoured.

    In eager mode the decision, the planned launch included, is kept in the context for the forward's
    other layers (`AttentionContext.routes`), keyed by everything it reads besides the context, so that
    the rest of a forward's layers skip the rule and the planning."""
    if backend == "reference" or key.shape[-2] == 0:
        return "chunked", None
    route_key = _route_key(query, key, value, backend, pattern, one_mask)
    if route_key is not None:
        kept = context.routes.get(route_key)
        if kept is not None:
            return kept
    needs = None if isinstance(pattern, str) else call_needs(query, key, value, context, pattern)
    if backend in LIBRARY_BACKENDS:
        launch = plan_library(backend, query, key, value, context, pattern, needs, variant_name)
        return _remember(context, route_key, backend, launch)
    sdpa_refusal = pattern if needs is None else SDPA.refusal(needs)
    sdpa_exact = sdpa_refusal is None
    if backend == "sdpa":
        if sdpa_refusal is not None:
            raise FusedPathError(
                f"Variant '{variant_name}' with backend='sdpa' cannot run this call on torch SDPA exactly: "
                f"{sdpa_refusal}. Use backend='auto' (an exact path for every call)."
            )
        return _remember(context, route_key, "sdpa")
    wants_kernels = backend == "triton" or fused_path.kernels_preferred(query.device)
    if backend == "auto" and sdpa_exact and not (wants_kernels and fused_path.decodes_with_padding(query, key, value, context)):
        if picks_fa4(query, key, value, context, pattern, needs):
            return _remember(context, route_key, "fa4", library_launch("fa4", context, pattern, needs))
        return _remember(context, route_key, "sdpa")
    if backend == "auto" and layout_routes.gathers_visible_keys(query, key, value, context, pattern):
        return _remember(context, route_key, "gather", layout_routes.plan_key_gather(query, key, context, pattern))
    if backend == "auto" and one_mask and not isinstance(pattern, str) and layout_routes.splits_whole_rows(query, key, value, context, pattern):
        return _remember(context, route_key, "whole-rows")
    if backend == "auto" and one_mask and not isinstance(pattern, str) and layout_routes.masked_sdpa_faster(query, key, value, context, pattern):
        return _remember(context, route_key, "masked-sdpa")
    if not wants_kernels:
        return _remember(context, route_key, "chunked")
    for name, picks in (("fa4", picks_fa4), ("cudnn", picks_cudnn)):
        if backend == "auto" and picks(query, key, value, context, pattern, needs):
            return _remember(context, route_key, name, library_launch(name, context, pattern, needs))
    plan = plan_triton(query, key, value, context, pattern, needs)
    if not isinstance(plan, str):
        return _remember(context, route_key, "triton", plan)
    if backend == "triton":
        raise FusedPathError(
            f"Variant '{variant_name}' with backend='triton' cannot run this call on the fused kernels: {plan}. "
            "Use backend='auto' (falls back to an exact path) or backend='reference'."
        )
    if sdpa_exact:  # a padded decoding step the decode kernel cannot take
        return _remember(context, route_key, "sdpa")
    if context.static and query.shape[-2] == 1 and not records_grad(query, key, value):
        return _remember(context, route_key, "chunked")  # a static step: the engine runs the decode kernel
    _warn_once(variant_name, plan)
    return _remember(context, route_key, "chunked")


def _route_key(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    backend: Backend,
    pattern: KernelMask | str,
    one_mask: bool,
) -> tuple | None:
    """What the rule and the planning read besides the context (shapes, dtypes, the device, whether
    autograd records the call): the key under which a decision is kept for the forward's other layers
    (`AttentionContext.routes`); None under tracing, where nothing is kept."""
    if tracing():
        return None
    return (pattern, backend, one_mask, *tensor_signature(query, key, value))


def _remember(
    context: AttentionContext, route_key: tuple | None, route: Route, launch: fused_path.Launch | None = None
) -> tuple[Route, fused_path.Launch | None]:
    """Keep a decision for the forward's other layers (nothing under tracing, where the key is None)."""
    decision = (route, launch)
    if route_key is not None:
        context.routes[route_key] = decision
    return decision


def plan_triton(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    pattern: KernelMask | str,
    needs: CallNeeds | None,
) -> fused_path.Launch | str:
    """The Triton kernels' launch for this call, or why they cannot run it: their row of the capability
    table (`capabilities.TRITON`), then their own check (`fused_path.plan`)."""
    if needs is None:
        return pattern
    return TRITON.refusal(needs) or fused_path.plan(query, key, value, context, pattern)


_WARNED: set[tuple[str, str]] = set()


def _warn_once(variant_name: str, reason: str) -> None:
    if tracing() or (variant_name, reason) in _WARNED:
        return
    _WARNED.add((variant_name, reason))
    warnings.warn(
        f"Variant '{variant_name}': the fused Triton path cannot run this call exactly ({reason}); using the "
        "exact chunked path, which is slower. Pass backend='reference' to choose it without this warning.",
        FusedPathFallbackWarning,
        stacklevel=5,
    )
