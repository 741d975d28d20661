"""Block-sparse layouts as data: which key blocks each query block may attend to.

A layout is a bool tensor ``[heads|1, query_blocks, key_blocks]``, True where a block of queries may
attend to a block of keys. `BlockSparseLayout` builds the usual patterns and their union:

* local band (Longformer, BigBird): in causal layers the query's own block and the
  ``local_blocks - 1`` blocks before it; in bidirectional layers the same reach on each side;
* global blocks (BigBird's ITC, Longformer's global tokens): the first ``global_blocks`` blocks are
  attended by every query block and, in bidirectional layers, attend to every key block;
* random blocks (BigBird): ``random_blocks`` more key blocks per query block, drawn from the blocks
  the other patterns leave out. The draw depends only on ``(seed, query block)`` (and, in
  bidirectional layers, the number of key blocks), so in causal layers a query block keeps its choice
  as the sequence grows and a KV cache sees the same pattern as a full forward;
* strided (Sparse Transformer): key block ``j`` visible to query block ``i`` when
  ``(i - j) % stride_blocks == 0``.

In causal layers the layout is also block-lower-triangular (``j <= i``); causality inside the diagonal
block is left to the token-level mask.

Every layout a variant uses is registered under a name (`register_layout`), from which it is rebuilt
for any number of blocks. The name is what travels through a call: the kernels' custom op takes it and
keeps the layout's tile lists by it, and the facts the chunked engine plans with (`layout_for`,
`is_dense`, `active_key_blocks`) are computed once per name and size and, under ``torch.compile``,
taken as constants of the graph (they depend on options and shapes only, never on activations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..context import tracing

LayoutBuilder = Callable[[int, bool], torch.Tensor]
"""``(blocks, causal) -> bool [heads|1, blocks, blocks]`` on the CPU."""


@dataclass(frozen=True)
class BlockSparseLayout:
    """A union of block patterns; see the module docstring for each one.

    Attributes:
        local_blocks: width of the band in blocks (0: no band).
        global_blocks: leading blocks that are global.
        random_blocks: extra key blocks drawn per query block.
        stride_blocks: period of the strided pattern (0: none).
        seed: seed of the random draw.
    """

    local_blocks: int = 3
    global_blocks: int = 0
    random_blocks: int = 0
    stride_blocks: int = 0
    seed: int = 0

    def build(
        self, num_query_blocks: int, num_key_blocks: int, causal: bool, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """Bool ``[num_query_blocks, num_key_blocks]``, True where a query block sees a key block."""
        rows = torch.arange(num_query_blocks)[:, None]
        columns = torch.arange(num_key_blocks)[None, :]
        distance = rows - columns
        if causal:
            layout = (distance >= 0) & (distance < self.local_blocks)
        else:
            layout = distance.abs() < self.local_blocks
        layout = layout | (columns < self.global_blocks)
        if not causal:
            layout = layout | (rows < self.global_blocks)
        if self.stride_blocks:
            layout = layout | (distance % self.stride_blocks == 0)
        if causal:
            layout = layout & (distance >= 0)
        if self.random_blocks:
            layout = layout | self._random(layout, causal)
        return layout.to(device)

    def _random(self, layout: torch.Tensor, causal: bool) -> torch.Tensor:
        """``random_blocks`` key blocks per query block among those ``layout`` leaves out."""
        chosen = torch.zeros_like(layout)
        generator = torch.Generator()
        for block in range(layout.shape[0]):
            reach = min(block + 1, layout.shape[1]) if causal else layout.shape[1]
            free = (~layout[block, :reach]).nonzero().squeeze(-1)
            if free.numel() == 0:
                continue
            generator.manual_seed(self.seed * 1_000_003 + block)
            # The draw order depends on the generator only, so a longer sequence keeps earlier choices.
            order = torch.randperm(free.numel(), generator=generator)
            chosen[block, free[order[: self.random_blocks]]] = True
        return chosen


_BUILDERS: dict[str, LayoutBuilder] = {}
_FIXED: dict[str, int] = {}
_BUILT: dict[tuple[str, int, bool], torch.Tensor] = {}
_FACTS: dict[tuple, object] = {}
_PLACED: dict[tuple[str, int, bool, str], torch.Tensor] = {}


def register_layout(name: str, builder: LayoutBuilder, fixed_blocks: int | None = None) -> str:
    """Register ``builder`` under ``name`` (a name must always describe the same layout) and return it.
    ``fixed_blocks``: the layout has this size whatever the call (a layout given by the user)."""
    _BUILDERS.setdefault(name, builder)
    if fixed_blocks is not None:
        _FIXED[name] = fixed_blocks
    return name


def _capacity(name: str, blocks: int, causal: bool) -> int:
    """Blocks a layout is built for. Causal layouts keep their earlier rows as they grow (see the
    module docstring), so one built for the next power of two serves every smaller size as a corner:
    a cache that grows by one block at a time builds O(log n) layouts, not n."""
    if name in _FIXED:
        return _FIXED[name]
    return 1 << max(0, blocks - 1).bit_length() if causal else blocks


def _built(name: str, blocks: int, causal: bool) -> torch.Tensor:
    key = (name, _capacity(name, blocks, causal), causal)
    if key not in _BUILT:
        if name not in _BUILDERS:
            raise KeyError(f"No block layout is registered under {name!r}; it is registered when a variant is built.")
        with torch.inference_mode(False):
            _BUILT[key] = _BUILDERS[name](key[1], causal).to(torch.bool).contiguous()
    return _BUILT[key]


def _place(name: str, blocks: int, causal: bool, device: str) -> int:
    """Build the layout covering ``blocks`` and put it on ``device`` (once); return its capacity."""
    capacity = _capacity(name, blocks, causal)
    key = (name, capacity, causal, device)
    if key not in _PLACED:
        with torch.inference_mode(False):
            _PLACED[key] = _built(name, blocks, causal).to(device)
    return capacity


_place_at_trace_time = torch.compiler.assume_constant_result(_place)

TRACED_CAUSAL_BLOCKS = 4096
"""Blocks of the causal layout that calls under torch.compile index into (their length may be symbolic)."""


def layout_for(name: str, blocks: int, causal: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """The bool layout ``[heads|1, >= blocks, >= blocks]`` registered under ``name``, on ``device``: one
    tensor per name, capacity and device, so the kernels find its tile lists again on every call.

    Under ``torch.compile`` it is built while tracing and then read from the store like any global tensor;
    causal calls there get the layout of `TRACED_CAUSAL_BLOCKS` blocks (a causal layout's corner is the
    layout of any shorter length), which covers them (checked), so a growing length needs no new graph.
    """
    if causal and tracing():
        torch._check(blocks <= TRACED_CAUSAL_BLOCKS)
        blocks = TRACED_CAUSAL_BLOCKS
    device = str(torch.device(device))
    capacity = _place_at_trace_time(name, blocks, causal, device)
    return _PLACED[(name, capacity, causal, device)]


def _remembered(key: tuple, compute: Callable[[], object]) -> object:
    if key not in _FACTS:
        _FACTS[key] = compute()
    return _FACTS[key]


def _dense_rows(name: str) -> int:
    """How many leading block rows of a causal layout are dense: every sequence of at most that many
    blocks sees all its (causal) block pairs. Causal layouts keep their rows as they grow, so this one
    number answers for every length (looked for up to `TRACED_CAUSAL_BLOCKS` blocks)."""

    def compute() -> int:
        capacity = 64
        while True:
            layout = _built(name, capacity, True)
            size = min(capacity, layout.shape[-2], layout.shape[-1])
            layout = layout[:, :size, :size]
            holes = (~layout & torch.ones(size, size, dtype=torch.bool).tril()).any(0).any(-1)
            if bool(holes.any()):
                return int(holes.nonzero()[0, 0])
            if size < capacity or capacity >= TRACED_CAUSAL_BLOCKS:
                return size  # dense as far as looked: longer calls are taken as sparse (still exact)
            capacity *= 4

    return _remembered(("dense rows", name), compute)


def _is_dense_bidirectional(name: str, blocks: int) -> bool:
    return _remembered(("dense", name, blocks), lambda: bool(_built(name, blocks, False)[:, :blocks, :blocks].all()))


def _density(name: str, blocks: int) -> float:
    return _remembered(("density", name, blocks),
                       lambda: float(_built(name, blocks, False)[:, :blocks, :blocks].float().mean()))


_density_at_trace_time = torch.compiler.assume_constant_result(_density)


def density(name: str, blocks: int) -> float:
    """Share of the block pairs of a bidirectional call over ``blocks`` blocks that the layout keeps
    (averaged over heads; computed once per name and size)."""
    return _density_at_trace_time(name, blocks)


_dense_rows_at_trace_time = torch.compiler.assume_constant_result(_dense_rows)
_is_dense_bidirectional_at_trace_time = torch.compiler.assume_constant_result(_is_dense_bidirectional)


def is_dense(name: str, blocks: int, causal: bool) -> bool:
    """Whether the layout allows every block pair (every causal one in causal layers): exact attention.
    In causal layers a comparison with a constant, so a compiled graph need not specialise on the length."""
    if causal:
        return blocks <= _dense_rows_at_trace_time(name)
    return _is_dense_bidirectional_at_trace_time(name, blocks)


def _row_runs(name: str, blocks: int) -> tuple[tuple[int, int, bool], ...]:
    """Runs ``(first, stop, whole)`` of consecutive block rows of a bidirectional layout over ``blocks``
    blocks, ``whole`` when every head's row in the run sees every key block."""

    def compute() -> tuple[tuple[int, int, bool], ...]:
        whole = _built(name, blocks, False)[:, :blocks, :blocks].all(-1).all(0).tolist()
        runs: list[tuple[int, int, bool]] = []
        for block, row_whole in enumerate(whole):
            if runs and runs[-1][2] == row_whole:
                runs[-1] = (runs[-1][0], block + 1, row_whole)
            else:
                runs.append((block, block + 1, row_whole))
        return tuple(runs)

    return _remembered(("row runs", name, blocks), compute)


row_runs = torch.compiler.assume_constant_result(_row_runs)
"""`_row_runs`, computed once per name and size (under ``torch.compile``, at trace time)."""


def _active_key_blocks(name: str, blocks: int, causal: bool, first: int, last: int) -> tuple[tuple[int, int], ...]:
    """Ranges ``[lo, hi)`` of key blocks that any head of query blocks ``first..last`` may see."""

    def compute() -> tuple[tuple[int, int], ...]:
        active = _built(name, blocks, causal)[:, first : last + 1, :blocks].any(0).any(0).tolist()
        ranges: list[tuple[int, int]] = []
        for block, on in enumerate(active):
            if not on:
                continue
            if ranges and ranges[-1][1] == block:
                ranges[-1] = (ranges[-1][0], block + 1)
            else:
                ranges.append((block, block + 1))
        return tuple(ranges)

    return _remembered(("active", name, blocks, causal, first, last), compute)


_active_key_blocks_at_trace_time = torch.compiler.assume_constant_result(_active_key_blocks)


def active_key_blocks(
    name: str, blocks: int, causal: bool, first: int, last: int
) -> tuple[tuple[int, int], ...] | None:
    """Key-block ranges a chunk of query blocks may see (what the chunked engine gathers), or None for
    every key: so in causal layers under ``torch.compile``, whose lengths may be symbolic (a growing cache
    with dynamic shapes) and cannot key a plan built on the host."""
    if causal and tracing():
        return None
    return _active_key_blocks_at_trace_time(name, blocks, causal, first, last)
