"""The Triton route: whether the fused kernels compute one call exactly, and the launch that does.

`flash`, `sliding` and `sparse` are all exact softmax attention under a mask, so the fused kernels
(`hf_efficient_attn.kernels`) and the chunked engine (`masked.masked_attention`) give the same result to
rounding. The kernels index keys by their place in the key tensor and align the last query with the last
key; a variant states its pattern in those terms as a `KernelMask`, and `plan` checks that this call's
facts (key positions, padding, packed documents, a caller's mask, dropout, dtype, head size, device)
let the kernels reproduce the chunked engine. If they do it returns the launch of the decode kernel (a
few queries against a long cache, no gradient needed) or of the dense kernels (the packed-documents
kernels when rows hold several documents), as a function of the query, key and value, so that the
other layers of a forward reuse it (`dispatch`); otherwise the reason they cannot. `dispatch` decides whether
the kernels are wanted at all. Under ``torch.compile`` whether rows hold several documents cannot be read
before the call; the kernels' op reads it (see `kernels.ops`).

Under ``torch.compile`` the launches go through the kernels' custom ops (`kernels.ops`), which the
compiler and CUDA graphs see as single operations; in eager mode they call the kernels directly, which
costs less host time per call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .context import AttentionContext, tracing
from .errors import VariantError
from .grad_mode import records_grad

DECODE_MAX_QUERIES = 16
"""Calls with at most this many queries (and no gradient) use the split-key decode kernel when they can."""


class FusedPathError(VariantError):
    """``backend="triton"`` was asked for a call the fused kernels cannot compute exactly."""


class FusedPathFallbackWarning(UserWarning):
    """``backend="auto"`` on CUDA fell back to the (exact, slower) chunked path."""


@dataclass(frozen=True)
class GridNeighbourhood:
    """A 2-D neighbourhood over a vision model's patch grid (`kernels.neighbourhood_attention`).

    Attributes:
        rows, columns: the patch grid; its cells follow ``prefix_tokens`` leading tokens in raster order.
        prefix_tokens: tokens before the grid (ViT's CLS).
        reach: grid cells see the cells at most this many rows and columns away.
    """

    rows: int
    columns: int
    prefix_tokens: int
    reach: int

    @property
    def tokens(self) -> int:
        """The sequence length the grid takes: the prefix and every cell."""
        return self.prefix_tokens + self.rows * self.columns


@dataclass(frozen=True)
class KernelMask:
    """A variant's pattern in the kernels' terms (see `kernels.fused_attention`).

    Attributes:
        window: ``(left, right)``: query at index ``p`` sees key ``j`` when ``p - j < left`` and
            ``j - p < right``; None leaves that side unbounded.
        sink_tokens: keys ``j < sink_tokens`` bypass the window.
        global_tokens: keys and queries with index below it bypass the window.
        block_layout: name of a registered block layout (`variants.block_layout`), or None.
        layout_block_size: tokens per layout block.
        layout_blocks: blocks the layout must cover for this call.
        layout_is_dense: whether the layout allows every block pair of this call (host fact).
        neighbourhood: a 2-D neighbourhood over a patch grid instead of a window (bidirectional calls);
            its leading ``max(sink_tokens, global_tokens)`` keys are seen by every query and its first
            ``global_tokens`` queries see every key.
    """

    window: tuple[int | None, int | None] = (None, None)
    sink_tokens: int = 0
    global_tokens: int = 0
    block_layout: str | None = None
    layout_block_size: int = 64
    layout_blocks: int = 0
    layout_is_dense: bool = False
    neighbourhood: GridNeighbourhood | None = None

    def counts_from_row_start(self) -> bool:
        """Whether the pattern is anchored at the first token (sinks, globals, blocks)."""
        return bool(self.sink_tokens or self.global_tokens or self.block_layout is not None)


def kernels_preferred(device: torch.device) -> bool:
    """Whether ``backend="auto"`` considers the kernels on this device (CUDA: yes; the CPU: no)."""
    return device.type == "cuda"


def decodes_with_padding(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext) -> bool:
    """A decoding step (few queries, no gradient) whose keys carry a padding mask: SDPA's fast kernels
    take no mask, the split-key decode kernel does."""
    return (
        context.causal
        and context.key_padding is not None
        and context.dense_mask is None
        and query.shape[-2] <= DECODE_MAX_QUERIES
        and not records_grad(query, key, value)
    )


Launch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""The planned launch of a call: attention of its query, key and value (or of any with the same shapes,
dtypes and device, under the same context: the other layers of one forward)."""


def plan(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    mask: KernelMask | str,
) -> Launch | str:
    """The launch of the kernel that computes this call exactly, or why no kernel does: the shapes and
    combinations of features the kernels refuse, for a call the capability table lets them run
    (`capabilities.TRITON`: no dropout, caller's mask or static cache)."""
    from . import kernels

    if isinstance(mask, str):
        return mask
    reason = kernels.supports(query, key, value, scale=context.scaling)
    if reason is not None:
        return reason
    if mask.neighbourhood is not None:
        return _plan_neighbourhood(query, key, context, mask)
    aligned = _align_keys(key, context, mask)
    if isinstance(aligned, str):
        return aligned
    key_padding, mask = aligned
    mask = _with_native_window(mask, context)
    if isinstance(mask, str):
        return mask
    if mask.counts_from_row_start() and context.left_padded and context.trimmed_prefix is None:
        return "left padding with sink tokens, global tokens or block layouts, which count from each row's first real token"
    documents = context.query_documents
    eager_packed = documents is not None and not tracing()  # eager: the rows are packed (see `context`)
    if eager_packed and (mask.counts_from_row_start() or key_padding is not None):
        return "packed documents with sink tokens, global tokens, block layouts or padding"
    scale = context.scaling
    if documents is None and _decodes(query, key, value, context, mask):
        return kernels.ops.DecodeLaunch(scale=scale, key_padding=key_padding)
    if documents is None and decodes_one_layout_row(query, key, value, context, mask):
        visible = layout_row_keys(key, context, mask).expand(key.shape[0], -1)
        visible = visible if key_padding is None else visible & key_padding
        return kernels.ops.DecodeLaunch(scale=scale, key_padding=visible)
    return kernels.ops.DenseLaunch(
        scale=scale,
        causal=context.causal,
        window=mask.window,
        sink_tokens=mask.sink_tokens,
        global_tokens=mask.global_tokens,
        layout=mask.block_layout,
        layout_blocks=mask.layout_blocks,
        layout_block_size=mask.layout_block_size,
        key_padding=key_padding,
        documents=documents,
    )


def _plan_neighbourhood(query: torch.Tensor, key: torch.Tensor, context: AttentionContext, mask: KernelMask) -> Launch | str:
    """The 2-D neighbourhood kernel's launch for a call over the whole grid, or why it cannot take it."""
    from . import kernels

    grid = mask.neighbourhood
    if context.causal or context.key_padding is not None or context.query_documents is not None:
        return "the 2-D neighbourhood kernel takes bidirectional calls without padding or packed documents"
    if context.native_window is not None:
        return "the model's own sliding window together with a 2-D neighbourhood"
    if not query.shape[-2] == key.shape[-2] == grid.tokens:
        return f"the 2-D neighbourhood kernel takes the whole grid ({grid.tokens} tokens), not {key.shape[-2]}"
    leading = max(mask.sink_tokens, mask.global_tokens, grid.prefix_tokens)
    global_queries = max(mask.global_tokens, grid.prefix_tokens)
    scale = context.scaling
    return lambda q, k, v: kernels.ops.neighbourhood_attention(
        q, k, v, scale=scale, grid=(grid.rows, grid.columns), reach=grid.reach, prefix_tokens=grid.prefix_tokens,
        leading_keys=leading, global_queries=global_queries,
    )


def _align_keys(
    key: torch.Tensor, context: AttentionContext, mask: KernelMask
) -> tuple[torch.Tensor | None, KernelMask] | str:
    """Key padding and pattern in the kernels' index space, or why they cannot be put there.

    Bidirectional calls already are. In causal calls the last query faces the last key (`build_context`
    drops the slots of a static cache past the newest token). A bounded cache's contiguous tail is aligned
    by construction; the leading keys it kept become the kernels' sinks, and those that are not sinks of
    their row (left padding, or a prefix kept wider than the sinks) are hidden through the key padding.
    """
    padding = context.key_padding
    if not context.causal:
        return padding, mask
    if context.trimmed_prefix is not None:
        prefix = context.trimmed_prefix
        if mask.block_layout is not None or mask.global_tokens:
            return "a bounded cache with a block layout or global tokens"
        if prefix != mask.sink_tokens or context.left_padded:
            slots = torch.arange(key.shape[-2], device=key.device)
            start = (
                torch.zeros(1, 1, dtype=torch.long, device=key.device)
                if context.sequence_start is None
                else context.sequence_start[:, None]
            )
            sink = (slots >= prefix) | ((slots - start >= 0) & (slots - start < mask.sink_tokens))
            padding = sink if padding is None else padding & sink
        return padding, KernelMask(window=mask.window, sink_tokens=prefix)
    return padding, mask


def _with_native_window(mask: KernelMask, context: AttentionContext) -> KernelMask | str:
    """The mask narrowed by the model's own sliding window (e.g. Mistral's), when there is one."""
    native = context.native_window
    if native is None:
        return mask
    if mask.sink_tokens or mask.global_tokens:
        return "the model's own sliding window together with sink or global tokens"
    left, right = mask.window
    left = native if left is None else min(left, native)
    if not context.causal:
        right = native if right is None else min(right, native)
    return KernelMask((left, right), 0, 0, mask.block_layout, mask.layout_block_size, mask.layout_blocks)


def decodes_one_layout_row(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext, mask: KernelMask
) -> bool:
    """One decoding query under a block layout shared by the heads: the keys it sees are one layout row,
    a key mask for the split-key decode kernel (no tile lists to build for a length that grows each step)."""
    from .variants import block_layout as layouts

    if mask.block_layout is None or not context.causal or query.shape[-2] != 1 or records_grad(query, key, value):
        return False
    if mask.window != (None, None) or mask.sink_tokens or mask.global_tokens:
        return False
    layout = layouts.layout_for(mask.block_layout, mask.layout_blocks, True, query.device)
    return layout.shape[0] == 1


def layout_row_keys(key: torch.Tensor, context: AttentionContext, mask: KernelMask) -> torch.Tensor:
    """Bool ``[1, k_len]``: the keys the one query's layout row allows (blocks counted from position 0;
    left-padded rows are refused before)."""
    from .variants import block_layout as layouts

    layout = layouts.layout_for(mask.block_layout, mask.layout_blocks, True, key.device)
    size = mask.layout_block_size
    key_blocks = context.key_positions // size
    return layout[0, context.query_offset // size].index_select(0, key_blocks)[None, :]


DECODE_UNDER_MASK_MIN_KEYS = 16384
"""Fewest keys for which one masked decoding query runs on the decode kernel (`decode_under_key_mask`):
between the 4k where it lost to SDPA and the 32k where it won, where SDPA's time per head, linear in
the keys (11 us at 4k), reaches the kernel's (about 50 us at 4k, mostly the fixed combine)."""


def decode_under_key_mask(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, visible: torch.Tensor, context: AttentionContext
) -> torch.Tensor | None:
    """One decoding query under a mask shared by its heads (``visible``, bool ``[batch|1, 1, 1, k_len]``) on
    the split-key decode kernel, with the mask as its key mask; None where the kernel does not apply.

    The kernel splits the keys over the GPU and reads each key and value once per group of query heads,
    where SDPA runs one program per head over every key; its partial results cost a fixed few kernels
    to combine. On the H200 (Llama-1B shapes, compiled static-cache decoding, batch 1) that made decoding
    1.21x slower than transformers' SDPA call at 4k keys and 0.72x its time at 32k, so calls with fewer
    than `DECODE_UNDER_MASK_MIN_KEYS` keys keep SDPA. Callers take this path only where SDPA has no fused
    kernel for the masked call with the key/value heads as they are (`sdpa_support`), which beats both.
    The mask is computed on the device, so this holds for static caches under CUDA graphs."""
    from . import kernels

    if key.shape[-2] < DECODE_UNDER_MASK_MIN_KEYS:
        return None
    if query.shape[-2] != 1 or visible.shape[1] != 1 or visible.shape[2] != 1 or context.dropout > 0:
        return None
    if records_grad(query, key, value):
        return None
    if kernels.supports(query, key, value, scale=context.scaling) is not None:
        return None
    key_mask = visible[:, 0, 0, :].expand(query.shape[0], key.shape[-2])
    return kernels.ops.decode_attention(query, key, value, scale=context.scaling, key_padding=key_mask)


def _decodes(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext, mask: KernelMask
) -> bool:
    """Whether the split-key decode kernel (forward only, every earlier key visible) fits this call."""
    if not context.causal or query.shape[-2] > DECODE_MAX_QUERIES or mask.block_layout is not None:
        return False
    if records_grad(query, key, value):
        return False
    left = mask.window[0]
    return left is None or key.shape[-2] - 1 - mask.sink_tokens < left


__all__ = [
    "DECODE_MAX_QUERIES", "FusedPathError", "FusedPathFallbackWarning", "GridNeighbourhood", "KernelMask", "Launch", "plan",
]
