"""Block-sparse layouts as data: which key blocks each query block may attend to.

A layout is a bool tensor ``[query_blocks, key_blocks]`` (or ``[heads, query_blocks, key_blocks]``),
True where a block of queries may attend to a block of keys. `BlockSparseLayout` builds the usual
patterns and their union:

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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
