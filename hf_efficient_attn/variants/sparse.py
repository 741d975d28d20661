"""`sparse`: exact softmax attention over a block-sparse pattern (BigBird, Longformer, Sparse Transformer)
or LongLoRA's shifted groups.

``pattern="block"``: tokens are cut into blocks of ``block_size`` counted from each row's first real
token (so left padding does not move the blocks), and query ``q`` may attend to key ``k`` when the
block layout allows block pair ``(q // block_size, k // block_size)`` (see `block_layout` for the
local, global, random and strided parts, or pass your own bool ``layout``), on top of causality,
padding and documents. Only the key blocks a chunk of queries can see are gathered, so the work grows
with the number of active blocks, not with N². A layout that allows every block pair is exact
attention.

``pattern="shifted"`` (LongLoRA's S²-Attn, a training-time pattern): the first half of the heads
attend within groups ``[g·G, (g+1)·G)`` of ``group_size`` tokens, the second half within the groups
shifted by ``G/2``, ``[g·G - G/2, (g+1)·G - G/2)``, causal inside in causal layers. Groups do not wrap
around, so nothing leaks from the future. As in LongLoRA, a module that is not training (``eval()``)
runs exact full attention.

Both are exact softmax attention under their mask; attention dropout applies to the probabilities.
On CUDA both run on the fused Triton kernels, which skip the tiles outside the layout (the shifted
groups are a per-head layout of half-groups); see `fused_path`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .. import fused_path
from ..context import AttentionContext
from ..masked import masked_attention
from .base import (
    AttentionVariant,
    LayerInfo,
    Role,
    VariantError,
    VariantOptions,
    positive_int,
    register_variant,
)
from .block_layout import BlockSparseLayout

QUERIES_PER_CHUNK = 128
"""About how many queries the engine handles at once, so each chunk gathers only its active key blocks."""


@dataclass(frozen=True)
class SparseOptions(VariantOptions):
    """Options of `sparse`.

    Attributes:
        pattern: ``"block"`` (block-sparse layout) or ``"shifted"`` (LongLoRA). Default ``"block"``.
        block_size: tokens per block. Default 64.
        local_blocks: band width in blocks; causal: own block and ``local_blocks - 1`` before it,
            bidirectional: the same reach on each side. Default 3.
        global_blocks: leading blocks seen by every query (and, in bidirectional layers, seeing every
            key). Default 1.
        random_blocks: extra key blocks per query block, drawn with ``seed`` (BigBird). Default 0.
        stride_blocks: strided pattern period in blocks, 0 for none (Sparse Transformer). Default 0.
        seed: seed of the random blocks. Default 0.
        layout: your own bool block layout ``[query_blocks, key_blocks]`` or
            ``[heads, query_blocks, key_blocks]`` (tensor or nested lists); replaces the four counts
            above. Default None.
        group_size: tokens per group for ``pattern="shifted"``; even. Default 1024.
        backend: ``"auto"`` (fused kernels on CUDA when exact, else the reference), ``"triton"``
            (kernels or an error) or ``"reference"``. Default ``"auto"``.
    """

    pattern: Literal["block", "shifted"] = "block"
    block_size: int = 64
    local_blocks: int = 3
    global_blocks: int = 1
    random_blocks: int = 0
    stride_blocks: int = 0
    seed: int = 0
    layout: Any = None
    group_size: int = 1024
    backend: fused_path.Backend = "auto"

    def __post_init__(self) -> None:
        # Kept as nested tuples: hashable, comparable and recorded in the model config as JSON lists.
        if isinstance(self.layout, torch.Tensor):
            object.__setattr__(self, "layout", _nested_tuple(self.layout.tolist()))
        elif isinstance(self.layout, list):
            object.__setattr__(self, "layout", _nested_tuple(self.layout))

    def validate(self) -> None:
        if self.pattern not in ("block", "shifted"):
            raise VariantError(f"`pattern` must be 'block' or 'shifted', got {self.pattern!r}.")
        positive_int("block_size", self.block_size)
        for name in ("local_blocks", "global_blocks", "random_blocks", "stride_blocks", "seed"):
            positive_int(name, getattr(self, name), minimum=0)
        positive_int("group_size", self.group_size, minimum=2)
        fused_path.check_backend(self.backend)
        if self.group_size % 2:
            raise VariantError(
                f"`group_size` must be even (the shifted heads move by group_size / 2), got {self.group_size}; "
                f"use {self.group_size + 1}."
            )
        if self.layout is None and self.pattern == "block" and not (
            self.local_blocks or self.global_blocks or self.stride_blocks
        ):
            raise VariantError(
                "local_blocks, global_blocks and stride_blocks are all 0, so queries would see no key; "
                "set local_blocks >= 1 (the query's own block)."
            )
        if self.layout is not None:
            shape = self.layout_tensor().shape
            if len(shape) not in (2, 3) or 0 in shape:
                raise VariantError(
                    f"`layout` must be a non-empty bool [query_blocks, key_blocks] or [heads, query_blocks, "
                    f"key_blocks], got shape {tuple(shape)}."
                )

    def layout_tensor(self) -> torch.Tensor:
        """The user's ``layout`` as a bool tensor."""
        try:
            return torch.tensor(self.layout, dtype=torch.bool)
        except (TypeError, ValueError) as error:
            raise VariantError(f"`layout` must be a rectangular bool tensor or nested lists: {error}") from None

    def block_layout(self) -> BlockSparseLayout:
        return BlockSparseLayout(
            local_blocks=self.local_blocks,
            global_blocks=self.global_blocks,
            random_blocks=self.random_blocks,
            stride_blocks=self.stride_blocks,
            seed=self.seed,
        )


@register_variant("block-sparse layouts (local, global, random, strided; BigBird/Longformer) or LongLoRA shifted groups")
class BlockSparseAttention(AttentionVariant):
    """Exact softmax attention under a block-sparse or shifted-group mask; see the module docstring."""

    name = "sparse"
    options_class = SparseOptions
    roles = frozenset({Role.CAUSAL, Role.BIDIRECTIONAL})
    options: SparseOptions

    def __init__(self, options: SparseOptions, layer: LayerInfo):
        super().__init__(options, layer)
        self._layouts: dict[tuple, torch.Tensor] = {}
        given = options.layout_tensor() if options.layout is not None else None
        if given is not None and given.dim() == 2:
            given = given[None]  # [1|heads, query_blocks, key_blocks], the form the kernels take
        self.register_buffer("given_layout", given, persistent=False)

    @classmethod
    def check_layer(cls, options: SparseOptions, layer: LayerInfo) -> None:
        super().check_layer(options, layer)
        if options.pattern == "block" and options.layout is not None:
            shape = options.layout_tensor().shape
            if len(shape) == 3 and shape[0] != layer.num_heads:
                raise VariantError(
                    f"A per-head `layout` has {shape[0]} heads but {layer.target} layer {layer.layer_index} has "
                    f"{layer.num_heads}; pass one [query_blocks, key_blocks] layout per head."
                )

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext
    ) -> torch.Tensor:
        return fused_path.attention(
            query,
            key,
            value,
            context,
            backend=self.options.backend,
            kernel_mask=lambda: self.kernel_mask(context),
            reference=lambda: self._reference(query, key, value, context),
            variant_name=self.name,
        )

    def kernel_mask(self, context: AttentionContext) -> fused_path.KernelMask:
        """The pattern as a block layout over absolute positions, for the fused kernels."""
        if self.options.pattern == "shifted":
            if not self.training:
                return fused_path.KernelMask()
            half = self.options.group_size // 2
            return fused_path.KernelMask(block_layout=self._shifted_layout(context, half), layout_block_size=half)
        layout = self._layout(context, context.query_positions, context.key_positions)
        return fused_path.KernelMask(block_layout=layout, layout_block_size=self.options.block_size)

    def _reference(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext
    ) -> torch.Tensor:
        if self.options.pattern == "shifted":
            if not self.training:
                return masked_attention(query, key, value, context)
            chunk = max(16, self.options.group_size // 2)
        else:
            size = self.options.block_size
            chunk = size * max(1, QUERIES_PER_CHUNK // size)
        return masked_attention(query, key, value, context, rule=self, chunk_size=chunk)

    def _shifted_layout(self, context: AttentionContext, half: int) -> torch.Tensor:
        """Per-head layout over half-groups: block ``a`` is in group ``a // 2``, or ``(a + 1) // 2`` when shifted."""
        count = _last_position(context) // half + 1
        device = context.query_positions.device
        heads = self.layer.num_heads

        def build() -> torch.Tensor:
            blocks = torch.arange(count, device=device)
            shift = (torch.arange(heads, device=device) >= heads // 2).long()[:, None]  # [heads, 1]
            groups = (blocks[None, :] + shift) // 2  # [heads, blocks]
            return groups[:, :, None] == groups[:, None, :]

        return self._remembered(("shifted", count, heads, device), build)

    def _remembered(self, key: tuple, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The layout under ``key``, built once: a normal tensor even under inference mode, so that the
        kernels can keep its tile lists (they never keep those of inference tensors)."""
        if key not in self._layouts:
            with torch.inference_mode(False):
                self._layouts[key] = build()
        return self._layouts[key]

    # The mask rule (see `masked.MaskRule`).

    def allowed(
        self, context: AttentionContext, query_positions: torch.Tensor, key_positions: torch.Tensor
    ) -> torch.Tensor:
        query_offset = _offsets(context, query_positions)  # [b|1, q]
        key_offset = _offsets(context, key_positions)  # [b|1, k]
        if self.options.pattern == "shifted":
            return self._same_group(query_offset, key_offset)
        layout = self._layout(context, query_positions, key_positions)
        size = self.options.block_size
        query_block = (query_offset // size)[:, :, None]
        key_block = (key_offset // size).clamp(max=layout.shape[-1] - 1)[:, None, :]
        return layout[:, query_block, key_block].transpose(0, 1)

    def candidate_keys(
        self, context: AttentionContext, query_positions: torch.Tensor, key_positions: torch.Tensor
    ) -> torch.Tensor:
        query_offset = _offsets(context, query_positions)
        key_offset = _offsets(context, key_positions)
        if self.options.pattern == "shifted":
            reach = self.options.group_size - 1
            low = query_offset.amin(dim=1, keepdim=True) - reach
            high = query_offset.amax(dim=1, keepdim=True) + reach
            return ((key_offset >= low) & (key_offset <= high)).any(0)
        layout = self._layout(context, query_positions, key_positions).any(0)
        size = self.options.block_size
        rows = torch.zeros(query_offset.shape[0], layout.shape[0], dtype=torch.bool, device=layout.device)
        rows.scatter_(1, query_offset // size, True)  # query blocks present in this chunk, per row
        active = (rows.to(torch.float32) @ layout.to(torch.float32)) > 0  # [b|1, key_blocks]
        key_block = (key_offset // size).clamp(max=layout.shape[-1] - 1)
        return active.gather(1, key_block.expand(active.shape[0], -1)).any(0)

    def _same_group(self, query_offset: torch.Tensor, key_offset: torch.Tensor) -> torch.Tensor:
        """Bool ``[b|1, heads, q, k]``: same group, with the second half of the heads shifted by G/2."""
        size = self.options.group_size
        heads = self.layer.num_heads
        shift = torch.zeros(heads, dtype=torch.long, device=query_offset.device)
        shift[heads // 2 :] = size // 2
        query_group = (query_offset[:, None, :] + shift[None, :, None]) // size
        key_group = (key_offset[:, None, :] + shift[None, :, None]) // size
        return query_group[..., :, None] == key_group[..., None, :]

    def _layout(
        self, context: AttentionContext, query_positions: torch.Tensor, key_positions: torch.Tensor
    ) -> torch.Tensor:
        """The block layout ``[1|heads, query_blocks, key_blocks]`` covering this call, on the positions'
        device: one tensor per size, so the fused kernels find its tile lists again on every call."""
        last = _last_position(context)
        blocks = last // self.options.block_size + 1
        device = query_positions.device
        if self.given_layout is not None:
            layout = self.given_layout.to(device)
            if layout.shape[-2] < blocks or layout.shape[-1] < blocks:
                raise VariantError(
                    f"The `layout` covers {layout.shape[-2]}×{layout.shape[-1]} blocks but this call needs "
                    f"{blocks} blocks of {self.options.block_size} tokens; pass a larger layout or a larger "
                    "block_size."
                )
            return layout
        return self._remembered(
            (blocks, context.causal, device),
            lambda: self.options.block_layout().build(blocks, blocks, context.causal, device)[None],
        )


def _last_position(context: AttentionContext) -> int:
    """The last position the layout must cover, known on the host (no GPU synchronisation per layer).
    Queries are contiguous from ``query_offset``; bidirectional calls also cover every key, and their keys
    are positions ``0 .. k_len - 1`` (see `build_context`)."""
    last = context.query_offset + context.query_positions.shape[0] - 1
    if not context.causal:
        last = max(last, context.key_positions.shape[0] - 1)
    return last


def _offsets(context: AttentionContext, positions: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, ``[b|1, n]`` (padding before it clamps to 0)."""
    if context.sequence_start is None:
        return positions[None, :]
    return (positions[None, :] - context.sequence_start[:, None]).clamp(min=0)


def _nested_tuple(value: Any) -> Any:
    return tuple(_nested_tuple(item) for item in value) if isinstance(value, (list, tuple)) else bool(value)
