"""`flash`: exact attention on the fused Triton kernels (FlashAttention-style tiling, online softmax).

The same result as `full` to rounding, in O(N) memory and at kernel speed: on CUDA it runs the fused
kernels (the decode kernel while generating), elsewhere, or for calls the kernels cannot take exactly
(see `fused_path`), the reference engine. Layers a patch leaves out run this variant too, so a partly
patched model stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import fused_path
from ..context import AttentionContext
from ..masked import masked_attention
from .base import AttentionVariant, VariantOptions, register_variant


@dataclass(frozen=True)
class FlashOptions(VariantOptions):
    """Options of `flash`.

    Attributes:
        backend: ``"auto"`` (fused kernels on CUDA when exact, else the reference), ``"triton"``
            (kernels or an error) or ``"reference"``. Default ``"auto"``.
    """

    backend: fused_path.Backend = "auto"

    def validate(self) -> None:
        fused_path.check_backend(self.backend)


@register_variant("exact attention on fused Triton kernels (FlashAttention-style), forward, backward and decode")
class FlashAttention(AttentionVariant):
    """Exact attention; the fused kernels where they apply, the reference engine elsewhere."""

    name = "flash"
    options_class = FlashOptions
    options: FlashOptions

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext
    ) -> torch.Tensor:
        return fused_path.attention(
            query,
            key,
            value,
            context,
            backend=self.options.backend,
            kernel_mask=fused_path.KernelMask,
            reference=lambda: masked_attention(query, key, value, context),
            variant_name=self.name,
        )
