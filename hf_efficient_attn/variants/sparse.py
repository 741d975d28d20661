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
Calls the layout covers entirely (a sequence shorter than the band) go to torch's SDPA (see `dispatch`);
on CUDA the others run on the fused Triton kernels, which skip the tiles outside the layout (the shifted
groups are a per-head layout of half-groups), see `fused_path`. Layouts are data: each variant registers
its own under a name (`block_layout.register_layout`) from which it is rebuilt for any length.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .. import dispatch
from ..context import AttentionContext, tracing
from ..fused_path import KernelMask
from ..masked import PositionRanges, masked_attention, plan_one_masked_call
from . import block_layout as layouts
from .base import (
    AttentionVariant,
    ExactPatternWarning,
    LayerInfo,
    Role,
    VariantError,
    VariantOptions,
    positive_int,
    register_variant,
    warn_exact_pattern,
)
from .block_layout import BlockSparseLayout

QUERIES_PER_CHUNK = 128
"""About how many queries the engine handles at once, so each chunk gathers only its active key blocks."""
_WARNED_ONE_BLOCK: set[tuple[str, int]] = set()
"""Block sizes already warned about calls that fit in one block (`BlockSparseAttention._warn_one_block`)."""


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
        backend: ``"auto"`` (the fastest exact backend per call, see `dispatch`), ``"sdpa"`` (torch's SDPA
            for the calls it computes exactly, or an error), ``"triton"`` (the fused
            kernels or an error), ``"cudnn"`` or ``"fa4"`` (cuDNN's fused attention or FlashAttention-4, their
            extras, for calls whose layout keeps every block pair; else an error) or ``"reference"`` (the
            chunked engine). Default ``"auto"``.
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
    backend: dispatch.Backend = "auto"

    def __post_init__(self) -> None:
        # Kept as nested tuples: hashable, comparable and recorded in the model config as JSON lists.
        if isinstance(self.layout, torch.Tensor):
            object.__setattr__(self, "layout", _nested_tuple(self.layout.tolist()))
        elif isinstance(self.layout, list):
            object.__setattr__(self, "layout", _nested_tuple(self.layout))

    def size_option(self) -> str:
        """The option that sets the pattern's unit: ``group_size`` for shifted groups, else ``block_size``."""
        return "group_size" if self.pattern == "shifted" else "block_size"

    def validate(self) -> None:
        if self.pattern not in ("block", "shifted"):
            raise VariantError(f"`pattern` must be 'block' or 'shifted', got {self.pattern!r}.")
        positive_int("block_size", self.block_size)
        for name in ("local_blocks", "global_blocks", "random_blocks", "stride_blocks", "seed"):
            positive_int(name, getattr(self, name), minimum=0)
        positive_int("group_size", self.group_size, minimum=2)
        dispatch.check_backend(self.backend)
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
        self.layout_name = _register(options, layer)
        self.share_plans(self.layout_name)

    @classmethod
    def check_layer(cls, options: SparseOptions, layer: LayerInfo) -> None:
        super().check_layer(options, layer)
        name = options.size_option()
        warn_exact_pattern(layer, name, getattr(options, name), "puts in one block",
                           f"Use a {name} well below the length of the inputs (64 or 128 for a few thousand tokens).")
        if options.pattern == "block" and options.layout is not None:
            shape = options.layout_tensor().shape
            if len(shape) == 3 and shape[0] != layer.num_heads:
                raise VariantError(
                    f"A per-head `layout` has {shape[0]} heads but {layer.target} layer {layer.layer_index} has "
                    f"{layer.num_heads}; pass one [query_blocks, key_blocks] layout per head."
                )

    def plan(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        pattern = self.kernel_mask(context)
        if pattern.layout_blocks == 1 and query.shape[-2] > 1 and not tracing():
            self._warn_one_block(key.shape[-2])
        return dispatch.plan_call(
            query,
            key,
            value,
            context,
            backend=self.options.backend,
            pattern=pattern,
            reference=lambda q, k, v, decode_kernel: self._reference(q, k, v, context, decode_kernel),
            variant_name=self.name,
            one_mask=lambda q, k, context: plan_one_masked_call(q, k, context, rule=self),
        )

    def _warn_one_block(self, tokens: int) -> None:
        """`ExactPatternWarning`, once per block size, for a call whose tokens all fit in one block (a
        decoder's prompt shorter than a block: `check_layer` warns where a layer's length is fixed)."""
        name = self.options.size_option()
        value = getattr(self.options, name)
        if (name, value) in _WARNED_ONE_BLOCK:
            return
        _WARNED_ONE_BLOCK.add((name, value))
        warnings.warn(
            f"sparse: {name}={value} puts all {tokens} tokens of this call in one block, so its attention is exact "
            f"and the pattern applies only to inputs longer than {self._layout_block_size()} tokens. Use a smaller "
            f"{name} for the pattern to reach inputs this short.",
            ExactPatternWarning,
            stacklevel=2,
        )

    def _exact(self) -> bool:
        """LongLoRA's shifted groups are a training-time pattern: outside training, exact attention."""
        return self.options.pattern == "shifted" and not self.training

    def kernel_mask(self, context: AttentionContext) -> KernelMask:
        """The pattern as a named block layout over absolute positions, for the fused kernels."""
        if self._exact():
            return KernelMask()
        blocks = self._blocks(context)
        size = self._layout_block_size()
        return KernelMask(
            block_layout=self.layout_name,
            layout_block_size=size,
            layout_blocks=blocks,
            layout_is_dense=layouts.is_dense(self.layout_name, blocks, context.causal),
        )

    def _layout_block_size(self) -> int:
        return self.options.group_size // 2 if self.options.pattern == "shifted" else self.options.block_size

    def _blocks(self, context: AttentionContext) -> int:
        """Layout blocks covering this call (host arithmetic: no GPU synchronisation per layer)."""
        blocks = _last_position(context) // self._layout_block_size() + 1
        if self.options.layout is not None:
            given = self.options.layout_tensor().shape
            if given[-2] < blocks or given[-1] < blocks:
                raise VariantError(
                    f"The `layout` covers {given[-2]}×{given[-1]} blocks but this call needs {blocks} blocks of "
                    f"{self.options.block_size} tokens; pass a larger layout or a larger block_size."
                )
        return blocks

    def _reference(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        context: AttentionContext,
        decode_kernel: bool = False,
    ) -> torch.Tensor:
        if self._exact():
            return masked_attention(query, key, value, context, decode_kernel=decode_kernel)
        if self.options.pattern == "shifted":
            chunk = max(16, self.options.group_size // 2)
        else:
            size = self.options.block_size
            chunk = size * max(1, QUERIES_PER_CHUNK // size)
        return masked_attention(query, key, value, context, rule=self, chunk_size=chunk, decode_kernel=decode_kernel)

    # The mask rule (see `masked.MaskRule`).

    def allowed(
        self, context: AttentionContext, query_positions: torch.Tensor, key_positions: torch.Tensor
    ) -> torch.Tensor:
        query_offset = _offsets(context, query_positions)  # [b|1, q]
        key_offset = _offsets(context, key_positions)  # [b|1, k]
        layout = self._layout(context, query_positions.device)
        size = self._layout_block_size()
        last = layout.shape[-1] - 1
        query_block = (query_offset // size).clamp(max=last)[:, :, None]
        key_block = (key_offset // size).clamp(max=last)[:, None, :]
        return layout[:, query_block, key_block].transpose(0, 1)

    def candidate_ranges(self, context: AttentionContext, first: int, last: int) -> PositionRanges | None:
        if context.left_padded:
            return None  # blocks count from each row's first real token
        size = self._layout_block_size()
        blocks = self._blocks(context)
        active = layouts.active_key_blocks(self.layout_name, blocks, context.causal, first // size, last // size)
        return None if active is None else [(low * size, high * size) for low, high in active]

    def ranges_exact(self, context: AttentionContext) -> bool:
        """Key blocks are whole in the candidates, so they are exact for a layout shared by the heads that
        counts from position 0 (not under tracing, where a causal call's candidates are every key)."""
        if context.left_padded or (context.causal and tracing()):
            return False
        return self._layout(context, torch.device("cpu")).shape[0] == 1

    def _layout(self, context: AttentionContext, device: torch.device) -> torch.Tensor:
        """The layout ``[1|heads, >= blocks, >= blocks]`` covering this call, on ``device``."""
        blocks = self._blocks(context)
        return layouts.layout_for(self.layout_name, blocks, context.causal, device)


def _register(options: SparseOptions, layer: LayerInfo) -> str:
    """Register this variant's layout (see `block_layout`) and return its name."""
    if options.pattern == "shifted":
        heads = layer.num_heads

        def shifted(blocks: int, causal: bool) -> torch.Tensor:
            """Per-head layout over half-groups: block ``a`` is in group ``a // 2``, or ``(a + 1) // 2`` when shifted."""
            index = torch.arange(blocks)
            shift = (torch.arange(heads) >= heads // 2).long()[:, None]  # [heads, 1]
            groups = (index[None, :] + shift) // 2  # [heads, blocks]
            return groups[:, :, None] == groups[:, None, :]

        return layouts.register_layout(f"shifted:heads={heads}", shifted)
    if options.layout is not None:
        given = options.layout_tensor()
        given = given[None] if given.dim() == 2 else given
        digest = hashlib.sha1(repr(options.layout).encode()).hexdigest()[:16]
        side = min(given.shape[-2], given.shape[-1])
        return layouts.register_layout(
            f"given:{digest}", lambda blocks, causal: given[:, :side, :side], fixed_blocks=side
        )
    pattern = options.block_layout()
    return layouts.register_layout(
        f"block:{pattern}", lambda blocks, causal: pattern.build(blocks, blocks, causal)[None]
    )


def _last_position(context: AttentionContext) -> int:
    """The last position the layout must cover, known on the host. Queries are contiguous from
    ``query_offset``; bidirectional calls also cover every key, and their keys are positions
    ``0 .. k_len - 1``; a static cache's calls cover all its slots."""
    keys = context.key_positions.shape[0]
    if context.query_offset is None:
        return keys - 1
    last = context.query_offset + context.query_positions.shape[0] - 1
    if not context.causal:
        last = max(last, keys - 1)
    return last


def _offsets(context: AttentionContext, positions: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, ``[b|1, n]`` (padding before it clamps to 0)."""
    if context.sequence_start is None:
        return positions[None, :]
    return (positions[None, :] - context.sequence_start[:, None]).clamp(min=0)


def _nested_tuple(value: Any) -> Any:
    return tuple(_nested_tuple(item) for item in value) if isinstance(value, (list, tuple)) else bool(value)
