"""`sliding`: local attention in a window, with optional attention sinks and global tokens.

Pattern, over absolute positions ``q`` (query) and ``k`` (key):

* causal layers: ``q - window < k <= q`` (``window`` counts the keys a query sees, itself included,
  as transformers' ``sliding_window`` does), plus the first ``sink_tokens`` real tokens of each row,
  which every later query keeps seeing (StreamingLLM's attention sinks);
* bidirectional layers, ``neighbourhood="1d"``: ``|q - k| < window`` (the same reach on each side);
  ``neighbourhood="2d"`` (vision): patches within ``window - 1`` rows and columns of each other on the
  patch grid. The first ``global_tokens`` tokens see and are seen by all (in 2-D, the tokens before the
  grid, such as ViT's CLS, always are); sinks are seen by all but see only their window.

With ``window`` at least the sequence length the pattern is full attention and results are exact:
such calls go to torch's SDPA (see `dispatch`). Narrower windows run on the fused Triton kernels on CUDA
(band tiles only, see `fused_path`; the 2-D neighbourhood on its own kernel, which visits only the
grid tiles within reach, `kernels.neighbourhood`) and on the chunked engine elsewhere. In generation the KV cache of a
windowed causal layer keeps only the sinks and the last ``window - 1`` tokens (`cache`), so memory stops
growing with length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from .. import dispatch
from ..context import AttentionContext
from ..fused_path import GridNeighbourhood, KernelMask
from ..masked import PositionRanges, masked_attention, plan_one_masked_call
from .base import (
    AttentionVariant,
    LayerInfo,
    Role,
    VariantError,
    VariantOptions,
    positive_int,
    register_variant,
    warn_exact_pattern,
)


@dataclass(frozen=True)
class SlidingOptions(VariantOptions):
    """Options of `sliding`.

    Attributes:
        window: keys a causal query sees, itself included; in bidirectional layers the reach is
            ``window - 1`` on each side (in rows and columns for ``"2d"``). Default 1024.
        sink_tokens: leading tokens every query keeps seeing (StreamingLLM). Default 0.
        global_tokens: leading tokens that see and are seen by every token; bidirectional layers only.
            Default 0.
        neighbourhood: ``"1d"`` (along the sequence) or ``"2d"`` (over a vision model's patch grid).
        backend: ``"auto"`` (the fastest exact backend per call, see `dispatch`), ``"sdpa"`` (torch's SDPA
            for the calls it computes exactly, or an error), ``"triton"`` (the fused
            kernels or an error), ``"cudnn"`` (cuDNN's fused attention, the
            ``cudnn`` extra, for windows without sinks or globals, or an error), ``"fa4"`` (FlashAttention-4,
            the ``fa4`` extra, on Hopper, for windows without sinks or globals, or an error) or
            ``"reference"`` (the chunked engine). Default ``"auto"``.
    """

    window: int = 1024
    sink_tokens: int = 0
    global_tokens: int = 0
    neighbourhood: Literal["1d", "2d"] = "1d"
    backend: dispatch.Backend = "auto"

    def validate(self) -> None:
        positive_int("window", self.window)
        positive_int("sink_tokens", self.sink_tokens, minimum=0)
        positive_int("global_tokens", self.global_tokens, minimum=0)
        if self.neighbourhood not in ("1d", "2d"):
            raise VariantError(f"`neighbourhood` must be '1d' or '2d', got {self.neighbourhood!r}.")
        dispatch.check_backend(self.backend)


@register_variant("local window (causal band or symmetric/2-D neighbourhood) with sink and global tokens")
class SlidingWindowAttention(AttentionVariant):
    """Exact softmax attention restricted to a window; see the module docstring for the pattern."""

    name = "sliding"
    options_class = SlidingOptions
    roles = frozenset({Role.CAUSAL, Role.BIDIRECTIONAL})
    options: SlidingOptions

    def __init__(self, options: SlidingOptions, layer: LayerInfo):
        super().__init__(options, layer)
        cells = None
        if options.neighbourhood == "2d" and layer.grid is not None:
            # row and column of every position on the patch grid (the tokens before it count as cell 0): a
            # table read by position, rather than arithmetic on positions that the compiler fuses into its
            # index computations
            columns = layer.grid[1]
            cell = (torch.arange(layer.prefix_tokens + layer.grid[0] * columns) - layer.prefix_tokens).clamp(min=0)
            cells = torch.stack([cell // columns, cell % columns], dim=-1)
        self.register_buffer("grid_cells", cells, persistent=False)
        # the pattern depends on the options and the layer only: made once, not in every call
        self._kernel_masks = {causal: self._make_kernel_mask(causal) for causal in (True, False)}
        self.share_plans()

    @classmethod
    def check_layer(cls, options: SlidingOptions, layer: LayerInfo) -> None:
        super().check_layer(options, layer)
        if layer.role is Role.CAUSAL and options.global_tokens:
            raise VariantError(
                "`global_tokens` needs bidirectional attention; in a causal layer use `sink_tokens` "
                f"(got global_tokens={options.global_tokens} for {layer.target} layer {layer.layer_index})."
            )
        if options.neighbourhood == "2d" and layer.grid is None:
            raise VariantError(
                f"neighbourhood='2d' needs a patch grid, which {layer.target} layers of this model do not have; "
                "use neighbourhood='1d'."
            )
        for name in ("sink_tokens", "global_tokens"):
            warn_exact_pattern(layer, name, getattr(options, name), "covers", f"Use fewer {name} than tokens "
                               "(for a ViT, sink_tokens=1 keeps its CLS token in every window).")

    def cache_window(self) -> int | None:
        """The window, or the model's own where that is narrower: the keys beyond it are hidden anyway, and a
        bounded cache that kept them would hold them in ring order, which the model's window cannot be
        applied to."""
        if self.layer.role is not Role.CAUSAL:
            return None
        native = self.layer.native_window
        return self.options.window if native is None else min(self.options.window, native)

    def plan(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        if self.options.neighbourhood == "2d":
            self._check_grid(query.shape[-2])
        return dispatch.plan_call(
            query,
            key,
            value,
            context,
            backend=self.options.backend,
            pattern=self.kernel_mask(context),
            reference=lambda q, k, v, decode_kernel: masked_attention(
                q, k, v, context, rule=self, chunk_size=self._chunk(), decode_kernel=decode_kernel
            ),
            variant_name=self.name,
            one_mask=lambda q, k, context: plan_one_masked_call(q, k, context, rule=self),
        )

    def kernel_mask(self, context: AttentionContext) -> KernelMask | str:
        """The pattern in the fused kernels' terms: a window, or a neighbourhood on the patch grid (full
        attention where it covers the grid)."""
        return self._kernel_masks[context.causal]

    def _make_kernel_mask(self, causal: bool) -> KernelMask | str:
        window = self.options.window
        if self.options.neighbourhood == "2d":
            if window >= max(self.layer.grid):
                return KernelMask()
            rows, columns = self.layer.grid
            grid = GridNeighbourhood(rows, columns, self.layer.prefix_tokens, reach=window - 1)
            return KernelMask(sink_tokens=self.options.sink_tokens, global_tokens=self._global_count(),
                              neighbourhood=grid)
        return KernelMask(
            window=(window, None if causal else window),
            sink_tokens=self.options.sink_tokens,
            global_tokens=self._global_count(),
        )

    def _chunk(self) -> int:
        """Queries per chunk of the chunked engine: a quarter of the window (at least 64), so a chunk's
        candidate keys (the chunk and its reach) are mostly keys its queries see. Measured on the CPU (2
        cores, float32): a bidirectional window of 512 over 1500 positions, 6 heads of 64, took 24 ms in
        chunks of 128 against 34 ms in chunks of 512 (dense SDPA 25 ms); causal windows of 256 and 1024
        over 2048 positions 24 / 51 ms against 28 / 78 ms in chunks of a window."""
        return max(64, min(self.options.window // 4, 1024))

    # The mask rule (see `masked.MaskRule`).

    def allowed(
        self, context: AttentionContext, query_positions: torch.Tensor, key_positions: torch.Tensor
    ) -> torch.Tensor:
        if self.options.neighbourhood == "2d":
            near = self._grid_near(query_positions, key_positions)
        else:
            distance = query_positions[:, None] - key_positions[None, :]
            near = distance < self.options.window if context.causal else distance.abs() < self.options.window
        near = near[None, None]  # [1, 1, q, k]
        start = context.first_real_positions().view(-1, 1, 1, 1)
        sinks = self.options.sink_tokens
        if sinks:
            offset = key_positions[None, None, None, :] - start
            near = near | ((offset >= 0) & (offset < sinks))
        global_count = self._global_count()
        if global_count:
            key_offset = key_positions[None, None, None, :] - start
            query_offset = query_positions[None, None, :, None] - start
            near = near | ((key_offset >= 0) & (key_offset < global_count))
            near = near | ((query_offset >= 0) & (query_offset < global_count))
        return near

    def candidate_ranges(self, context: AttentionContext, first: int, last: int) -> PositionRanges | None:
        global_count = self._global_count()
        latest_start = context.max_sequence_start
        if global_count and (latest_start is None or first < latest_start + global_count):
            return None  # a global query sees every key
        reach = self.options.window - 1
        if self.options.neighbourhood == "2d":
            columns = self.layer.grid[1]
            low, high = first - reach * columns - reach, last + reach * columns + reach
        else:
            low, high = first - reach, last + (0 if context.causal else reach)
        leading = max(self.options.sink_tokens, global_count)
        if not leading:
            return [(low, high + 1)]
        return [(0, low if latest_start is None else latest_start + leading), (low, high + 1)]

    def ranges_exact(self, context: AttentionContext) -> bool:
        """The 1-D candidates are the sinks or globals, the window, and every key for a global query: exact
        when rows start at position 0 (with left padding they cover the latest row start's)."""
        return self.options.neighbourhood == "1d" and not context.left_padded

    def _global_count(self) -> int:
        if self.options.neighbourhood == "2d":
            return max(self.options.global_tokens, self.layer.prefix_tokens)
        return self.options.global_tokens

    def _check_grid(self, length: int) -> None:
        rows, columns = self.layer.grid
        prefix = self.layer.prefix_tokens
        if length > prefix + rows * columns:
            raise VariantError(
                f"The 2-D neighbourhood expects {prefix} + {rows}×{columns} tokens but got {length}; "
                "images of another size change the patch grid: use neighbourhood='1d' for them."
            )

    def _grid_near(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        query_cells = self.grid_cells.index_select(0, query_positions)  # [q, 2]: row, column
        key_cells = self.grid_cells.index_select(0, key_positions)
        distance = (query_cells[:, None, :] - key_cells[None, :, :]).abs()  # [q, k, 2]
        return (distance < self.options.window).all(-1)
