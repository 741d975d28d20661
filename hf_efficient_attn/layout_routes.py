"""Block layouts on SDPA: the routes by which a call under a block layout runs on torch's SDPA where that
is faster than the kernels or the chunked engine, and what decides each (`dispatch.choose` asks them in
order):

- ``"gather"``: a decoding step under a layout shared by the heads, SDPA without a mask over the key
  blocks its layout row allows (`gathers_visible_keys`, `plan_key_gather`);
- ``"whole-rows"``: a bidirectional inference call under a nearly dense layout where the kernels do not
  run, SDPA without a mask over the block rows the layout leaves whole and under the dense mask over the
  others (`splits_whole_rows`, `plan_whole_rows`);
- ``"masked-sdpa"``: a short bidirectional inference call under a layout that keeps most pairs, one SDPA
  call under the dense mask (`masked_sdpa_faster`; the variant makes the mask)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch

from . import fused_path
from .context import AttentionContext, positions, tracing
from .fused_path import KernelMask
from .grad_mode import records_grad
from .sdpa_calls import sdpa_grouped
from .variants import block_layout as layouts


def gathers_visible_keys(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext, pattern: KernelMask | str
) -> bool:
    """A decoding step under a block layout shared by the heads, over keys that are positions ``0..n-1``
    with nothing else masking them (no padding, no bounded cache, no static slots, no caller's mask, no
    native window short of the keys): SDPA over exactly the key blocks the query's layout row allows, with
    no mask (`plan_key_gather`), reads only those keys, where the decode kernel would read the whole cache
    under a key mask derived in every layer. Eager mode only: under tracing the length may be symbolic
    and a host plan of key blocks cannot be kept (`block_layout.active_key_blocks`)."""
    return (
        not tracing()
        and not isinstance(pattern, str)
        and context.key_padding is None
        and not context.left_padded
        and not context.static
        and context.trimmed_prefix is None
        and context.dense_mask is None
        and context.query_documents is None
        and context.query_offset == key.shape[-2] - 1
        and (context.native_window is None or context.native_window >= key.shape[-2])
        and fused_path.decodes_one_layout_row(query, key, value, context, pattern)
    )


def plan_key_gather(
    query: torch.Tensor, key: torch.Tensor, context: AttentionContext, pattern: KernelMask
) -> fused_path.Launch:
    """The launch of a decoding step that `gathers_visible_keys`: SDPA without a mask over the key blocks
    of the query's layout row (host facts of the layout, computed once per name and size), planned once
    per forward and kept with the route (two copies and one SDPA call per layer). On CUDA the blocks are
    gathered through one index made now: a concatenation of the runs' slices costs a view per run and
    tensor of host time, at batch-1 decoding what the GPU waits on. On the CPU, where the copy itself is
    the cost, the runs' slices are concatenated: half the time of `index_select` (7 against 14 us for
    three runs of 512 keys).

    Not one SDPA call over every key under the row's mask: on Hopper only cuDNN fuses that grouped
    masked call, and cuDNN builds a graph for every new shape, which a growing cache has at every step
    (see `sdpa_support.without_cudnn`)."""
    size = pattern.layout_block_size
    row = context.query_offset // size
    k_len = key.shape[-2]
    active = layouts.active_key_blocks(pattern.block_layout, pattern.layout_blocks, True, row, row)
    ranges = [(low * size, min(high * size, k_len)) for low, high in active if low * size < k_len]
    scale, dropout = context.scaling, context.dropout
    if len(ranges) == 1:
        low, high = ranges[0]
        return lambda q, k, v: sdpa_grouped(q, k[..., low:high, :], v[..., low:high, :], None, False, scale, dropout)
    if key.is_cuda:
        index = torch.cat([positions(low, high, key.device) for low, high in ranges])

        def visible(states: torch.Tensor) -> torch.Tensor:
            return states.index_select(-2, index)
    else:

        def visible(states: torch.Tensor) -> torch.Tensor:
            return torch.cat([states[..., low:high, :] for low, high in ranges], dim=-2)

    return lambda q, k, v: sdpa_grouped(q, visible(k), visible(v), None, False, scale, dropout)


MASKED_SDPA_MAX_TOKENS = 2048
MASKED_SDPA_MIN_DENSITY = 0.6
"""Least share of pairs a block layout keeps for one masked SDPA call to beat the chunked engine."""


WHOLE_ROWS_MIN_SHARE = 0.75


def splits_whole_rows(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext, pattern: KernelMask
) -> bool:
    """Whether a bidirectional inference call under a nearly dense block layout runs as SDPA without a
    mask over the query rows the layout leaves whole and the dense mask over the others only
    (`plan_whole_rows`): when whole rows are at least `WHOLE_ROWS_MIN_SHARE` of the block rows, on
    devices where the kernels do not run.

    On the CPU the split replaces one masked call over every row: Whisper's encoder under the `native.py`
    layout (99% of the pairs, 10 of its 12 block rows whole) takes 22 ms per call masked against 15 for
    dense SDPA at 1 x 6 heads; split, whisper-tiny's encoder runs within 1.08x of unpatched
    (benchmarks/results/native-cpu). Not where the kernels run: on the H200 (bf16, Whisper-large-v3's
    encoder at 1500 frames, batch 4) the split forward took 49.0 ms against 30.4 ms on our kernel and
    27.8 ms unpatched, and planned (its masks made once) one call still took 0.763 ms on an H100 against
    0.217 on our kernel and 0.136 for dense SDPA (benchmarks/results/h100-archive-2026-12/sdpa-backends-h100)."""
    n = key.shape[-2]
    if (
        fused_path.kernels_preferred(query.device)
        or pattern.block_layout is None
        or context.causal
        or query.shape[-2] != n
        or context.key_padding is not None
        or context.query_documents is not None
        or context.dense_mask is not None
        or context.dropout > 0
        or records_grad(query, key, value)
    ):
        return False
    blocks = -(-n // pattern.layout_block_size)
    whole = sum(stop - first for first, stop, row_whole in layouts.row_runs(pattern.block_layout, blocks) if row_whole)
    return whole >= WHOLE_ROWS_MIN_SHARE * blocks


def plan_whole_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    context: AttentionContext,
    pattern: KernelMask,
    one_mask: Callable[[torch.Tensor, torch.Tensor, AttentionContext], fused_path.Launch],
) -> fused_path.Launch:
    """The launch of a bidirectional call under a block layout (`splits_whole_rows`), by runs of query
    block rows: SDPA without a mask over every key for a run of rows the layout leaves whole, one call
    under the pattern's dense mask (``one_mask``, its mask made now) for a run of the others; the runs'
    outputs are joined along the queries."""
    size = pattern.layout_block_size
    n = query.shape[-2]
    runs = []
    for first, stop, whole in layouts.row_runs(pattern.block_layout, -(-n // size)):
        start, end = first * size, min(stop * size, n)
        if whole:
            launch = functools.partial(sdpa_grouped, mask=None, is_causal=False, scale=context.scaling, dropout=0.0)
        else:
            part = dataclasses.replace(context, query_positions=context.query_positions[start:end], query_offset=start)
            launch = one_mask(query[..., start:end, :], key, part)
        runs.append((start, end, launch))

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([launch(q[..., start:end, :], k, v) for start, end, launch in runs], dim=-2)

    return attend


def masked_sdpa_faster(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext, pattern: KernelMask
) -> bool:
    """Whether one SDPA call under the pattern's dense mask beats the chunked engine (where the kernels do
    not run).

    A block layout that keeps most pairs saves the chunked engine little work, and its chunks' gathers
    cost more than one masked call. Measured on the CPU (2 cores), float32, at Whisper's 1500 positions,
    1 x 6 heads of 64: dense SDPA 14-16 ms; block layouts of 24%, 45%, 55%, 65%, 76%, 99% of the pairs
    10 / 23, 17 / 23, 22 / 22, 24 / 23, 28 / 23, 29 / 22 ms (chunked / masked), while windows of 57-98%
    stay faster chunked (24-26 ms against 28-32). So block layouts from 60%, for bidirectional inference
    calls of at most `MASKED_SDPA_MAX_TOKENS` tokens (what was measured).

    Not where the kernels run: on the H200 at the same length (bf16, 4 x 20 heads), our kernel takes 101,
    138 and 207 us per call for a window of 512, a window of 1024 and a 99% block layout, against 340, 302
    and 320 us for the masked call (and 132 us for dense SDPA without a mask).
    """
    n = key.shape[-2]
    if (
        fused_path.kernels_preferred(query.device)
        or pattern.block_layout is None
        or context.causal
        or not query.shape[-2] == n <= MASKED_SDPA_MAX_TOKENS
        or context.query_documents is not None
        or context.dense_mask is not None
        or records_grad(query, key, value)
    ):
        return False
    return layouts.density(pattern.block_layout, -(-n // pattern.layout_block_size)) >= MASKED_SDPA_MIN_DENSITY
