"""`flash`: exact attention on the fastest exact backend for each call.

The same result as `full` to rounding. Each call goes where `dispatch` sends it: torch's SDPA (cuDNN /
FlashAttention on CUDA, its CPU kernels on the CPU) for what SDPA computes without a dense mask, which is
most calls of an unpadded model; our fused Triton kernels on CUDA for what SDPA would need a dense mask
for (packed documents, decoding with padding); the chunked engine for the rest. Layers a patch leaves out
run this variant too, so a partly patched model is never slower than the unpatched one.
``backend="triton"`` forces the Triton kernels for every call they can take.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import dispatch
from ..context import AttentionContext
from ..fused_path import KernelMask
from ..masked import masked_attention
from .base import AttentionVariant, LayerInfo, VariantOptions, register_variant


@dataclass(frozen=True)
class FlashOptions(VariantOptions):
    """Options of `flash`.

    Attributes:
        backend: ``"auto"`` (the fastest exact backend per call, see `dispatch`), ``"sdpa"`` (torch's SDPA
            for the calls it computes exactly, or an error), ``"triton"`` (the fused
            kernels or an error), ``"cudnn"`` (cuDNN's fused attention, the ``cudnn`` extra, or an error),
            ``"fa4"`` (FlashAttention-4, the ``fa4`` extra, on Hopper, or an error) or ``"reference"`` (the
            chunked engine). Default ``"auto"``.
    """

    backend: dispatch.Backend = "auto"

    def validate(self) -> None:
        dispatch.check_backend(self.backend)


@register_variant("exact attention on the fastest exact backend per call (SDPA, fused Triton kernels)")
class FlashAttention(AttentionVariant):
    """Exact attention; SDPA or the fused kernels where they apply, the chunked engine elsewhere."""

    name = "flash"
    options_class = FlashOptions
    options: FlashOptions

    def __init__(self, options: FlashOptions, layer: LayerInfo):
        super().__init__(options, layer)
        self.share_plans()

    def plan(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        return dispatch.plan_call(
            query,
            key,
            value,
            context,
            backend=self.options.backend,
            pattern=KernelMask(),
            reference=lambda q, k, v, decode_kernel: masked_attention(q, k, v, context, decode_kernel=decode_kernel),
            variant_name=self.name,
        )
