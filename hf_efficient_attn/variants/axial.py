"""`axial`: axial attention over a vision model's patch grid, the tokens before the grid (ViT's CLS) global.

Half the heads attend along rows, the other half along columns, in the same layer: the first
``heads // 2`` heads let a patch see the patches of its row, the others the patches of its column, and
every head lets the prefix tokens see and be seen by all. Within one layer a patch thus reaches its row
and its column, and through the next layer every other patch (row, then column): two steps, as axial
attention promises. The heads are split rather than the layer run twice (rows, then columns over the
rows' output) because a pretrained layer has one set of projections, and a second softmax over values
already mixed along rows is another operator than the one the model was trained with; split heads keep
one softmax per head, each exact under its mask (CSWin's cross-shaped windows split heads the same way).

Rows and columns are bands on a permuted sequence: for the row heads the grid in raster order, for the
column heads in column-major order, in both cases with the prefix moved to the end. There each line (a
row or a column) is one block of a block layout that allows each line its own block and the prefix
blocks everything, registered by name like `sparse`'s layouts (`block_layout`), so each half is one call
of the rule in `dispatch`: the fused block-layout kernels on CUDA (which skip every tile outside a line
and the prefix), the chunked engine on the CPU, SDPA where the layout is dense (a grid of one line). The
outputs are put back in the model's order. Exact softmax attention under the mask; dropout applies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .. import dispatch
from ..context import AttentionContext
from ..fused_path import KernelMask
from ..masked import PositionRanges, masked_attention, plan_one_masked_call
from . import block_layout as layouts
from .base import (
    AttentionVariant,
    LayerInfo,
    Role,
    VariantError,
    VariantOptions,
    register_variant,
    variants_for_role,
)


@dataclass(frozen=True)
class AxialOptions(VariantOptions):
    """Options of `axial`.

    Attributes:
        backend: ``"auto"`` (the fastest exact backend per call, see `dispatch`), ``"sdpa"`` (torch's SDPA
            for the calls it computes exactly, or an error), ``"triton"`` (the fused
            block-layout kernels or an error) or ``"reference"`` (the chunked engine). Default ``"auto"``.
    """

    backend: dispatch.Backend = "auto"

    def validate(self) -> None:
        dispatch.check_backend(self.backend)
        if self.backend in ("cudnn", "fa4", "sdpa"):
            raise VariantError(f"backend={self.backend!r} cannot run axial attention (it takes no block layout); "
                               "use backend='auto' or 'triton'.")


@dataclass(frozen=True)
class GridLines:
    """One half's pattern on its permuted sequence: ``lines`` lines of ``length`` tokens, then ``prefix``
    tokens that see and are seen by all. A mask rule of the chunked engine (`masked.MaskRule`) and, as a
    named block layout of one block per line, the fused kernels' pattern.

    Attributes:
        lines, length, prefix: the lines (rows or columns), the tokens of each, the tokens after them.
        layout_name: the registered block layout (`block_layout.register_layout`).
    """

    lines: int
    length: int
    prefix: int
    layout_name: str

    @classmethod
    def register(cls, lines: int, length: int, prefix: int) -> GridLines:
        def build(blocks: int, causal: bool) -> torch.Tensor:
            block = torch.arange(blocks)
            in_prefix = block >= lines
            layout = (block[:, None] == block[None, :]) | in_prefix[:, None] | in_prefix[None, :]
            return layout[None]

        name = layouts.register_layout(f"axial:lines={lines},length={length},prefix={prefix}", build)
        return cls(lines, length, prefix, name)

    @property
    def blocks(self) -> int:
        return -(-(self.lines * self.length + self.prefix) // self.length)

    def kernel_mask(self) -> KernelMask:
        return KernelMask(block_layout=self.layout_name, layout_block_size=self.length, layout_blocks=self.blocks,
                          layout_is_dense=layouts.is_dense(self.layout_name, self.blocks, False))

    def allowed(
        self, context: AttentionContext, query_positions: torch.Tensor, key_positions: torch.Tensor
    ) -> torch.Tensor:
        layout = layouts.layout_for(self.layout_name, self.blocks, False, query_positions.device)[0]
        return layout[(query_positions // self.length)[:, None], (key_positions // self.length)[None, :]][None, None]

    def candidate_ranges(self, context: AttentionContext, first: int, last: int) -> PositionRanges | None:
        size = self.length
        active = layouts.active_key_blocks(self.layout_name, self.blocks, False, first // size, last // size)
        return None if active is None else [(low * size, high * size) for low, high in active]

    def ranges_exact(self, context: AttentionContext) -> bool:
        return False  # bidirectional only: never asked for one causal query


@register_variant("axial attention on a patch grid: half the heads along rows, half along columns, CLS global (ViT)")
class AxialAttention(AttentionVariant):
    """Rows for the first half of the heads, columns for the second; see the module docstring."""

    name = "axial"
    options_class = AxialOptions
    roles = frozenset({Role.BIDIRECTIONAL})
    options: AxialOptions

    def __init__(self, options: AxialOptions, layer: LayerInfo):
        super().__init__(options, layer)
        rows, columns = layer.grid
        prefix = layer.prefix_tokens
        cells = torch.arange(rows * columns).view(rows, columns) + prefix
        leading = torch.arange(prefix)
        for name, order in (("row", cells.flatten()), ("column", cells.T.flatten())):
            order = torch.cat([order, leading])
            self.register_buffer(f"{name}_order", order, persistent=False)
            self.register_buffer(f"{name}_inverse", order.argsort(), persistent=False)
        self.row_lines = GridLines.register(rows, columns, prefix)
        self.column_lines = GridLines.register(columns, rows, prefix)
        self.share_plans()

    @classmethod
    def check_layer(cls, options: AxialOptions, layer: LayerInfo) -> None:
        super().check_layer(options, layer)
        if layer.grid is None:
            raise VariantError(
                f"Variant 'axial' needs a patch grid (rows and columns of image patches), which {layer.target} "
                f"layers of this model do not have. Variants that can run there: "
                f"{', '.join(variants_for_role(layer.role, excluding=[cls.name]))}."
            )
        if layer.num_heads < 2:
            raise VariantError(
                f"Variant 'axial' gives half the heads to rows and half to columns, but {layer.target} layer "
                f"{layer.layer_index} has {layer.num_heads} head; use 'sliding' with neighbourhood='2d'."
            )

    def plan(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        self._check_length(query.shape[-2])
        heads, kv_heads = query.shape[1], key.shape[1]
        split = heads // 2
        halves = []
        for lines, order, inverse, query_heads in (
            (self.row_lines, self.row_order, self.row_inverse, (0, split)),
            (self.column_lines, self.column_order, self.column_inverse, (split, heads)),
        ):
            take = _head_slices(query_heads, heads, kv_heads)
            half_context = _permuted(context, order, query_heads)
            launch = dispatch.plan_call(
                *take(query, key, value),
                half_context,
                backend=self.options.backend,
                pattern=lines.kernel_mask(),
                reference=_reference(half_context, lines),
                variant_name=self.name,
                one_mask=lambda q, k, c, lines=lines: plan_one_masked_call(q, k, c, rule=lines),
            )
            halves.append((take, order, inverse, launch))

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            outputs = []
            for take, order, inverse, launch in halves:
                permuted = (x.index_select(-2, order) for x in take(q, k, v))
                outputs.append(launch(*permuted).index_select(-2, inverse))
            return torch.cat(outputs, dim=1)

        return attend

    def _check_length(self, length: int) -> None:
        rows, columns = self.layer.grid
        prefix = self.layer.prefix_tokens
        if length != prefix + rows * columns:
            raise VariantError(
                f"Axial attention expects {prefix} + {rows}×{columns} tokens but got {length}; images of another "
                "size change the patch grid: patch a model configured for that image size."
            )


def _reference(context: AttentionContext, lines: GridLines) -> Callable[..., torch.Tensor]:
    """The chunked engine over one half's permuted call, in chunks of whole lines (at least 64 queries)."""
    chunk = lines.length * max(1, 64 // lines.length)
    return lambda q, k, v, decode_kernel: masked_attention(q, k, v, context, rule=lines, chunk_size=chunk,
                                                           decode_kernel=decode_kernel)


def _head_slices(
    query_heads: tuple[int, int], heads: int, kv_heads: int
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(q, k, v) -> (q, k, v)`` of the query heads ``[first, stop)`` and their key/value heads: a slice of
    the key/value heads where the half takes whole groups, else the keys repeated per query head."""
    first, stop = query_heads
    groups = heads // kv_heads
    if first % groups == 0 and stop % groups == 0:
        return lambda q, k, v: (q[:, first:stop], k[:, first // groups : stop // groups],
                                v[:, first // groups : stop // groups])

    def repeated(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.arange(first, stop, device=k.device) // groups
        return q[:, first:stop], k.index_select(1, index), v.index_select(1, index)

    return repeated


def _permuted(context: AttentionContext, order: torch.Tensor, query_heads: tuple[int, int]) -> AttentionContext:
    """The context of one half's call on the permuted sequence: its key padding and a caller's mask put in
    that order (positions stay ``0..n-1``, now places in the permuted sequence; blocks count from 0)."""
    if context.key_padding is None and context.dense_mask is None:
        return context
    dense = context.dense_mask
    if dense is not None:
        if dense.shape[1] > 1:
            dense = dense[:, query_heads[0] : query_heads[1]]
        dense = dense.index_select(-2, order).index_select(-1, order)
    padding = None if context.key_padding is None else context.key_padding.index_select(1, order)
    return replace(context, key_padding=padding, dense_mask=dense, sequence_start=None, max_sequence_start=0)
