"""Fused Triton attention kernels (forward and backward), a varlen entry point, a 2-D neighbourhood kernel
for patch grids and a decode kernel.

Importing this package does not import triton; the kernels are compiled on first use. Set
TRITON_INTERPRET=1 before the first use to run them on CPU tensors (slow, for tests).

    from hf_efficient_attn.kernels import fused_attention, neighbourhood_attention, supports
    if (why := supports(q, k, v)) is None:
        out = fused_attention(q, k, v, scale=q.shape[-1] ** -0.5, causal=True, window=(1024, None))

    # a ViT's patches (CLS first) seeing their 2-D neighbourhood of 4 rows and columns each way
    out = neighbourhood_attention(q, k, v, scale=q.shape[-1] ** -0.5, grid=(64, 64), reach=4, prefix_tokens=1)
"""

from __future__ import annotations

from .checks import KernelInputError, supports

__all__ = ["KernelInputError", "decode_attention", "fused_attention", "fused_attention_varlen", "neighbourhood_attention",
           "ops", "supports"]


def __getattr__(name: str):
    if name in ("fused_attention", "fused_attention_varlen"):
        from . import function

        return getattr(function, name)
    if name == "neighbourhood_attention":
        from .neighbourhood_function import neighbourhood_attention

        return neighbourhood_attention
    if name == "decode_attention":
        from .decode import decode_attention

        return decode_attention
    if name == "ops":
        import importlib

        return importlib.import_module(f"{__name__}.ops")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
