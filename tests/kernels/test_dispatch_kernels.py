"""The dispatch rule where the kernels are preferred (CUDA; here the CPU with the kernels interpreted):
SDPA for the calls it computes exactly, the Triton kernels where they save work, and the same results.

Head size 32 (the kernels take it), float32, outputs against the chunked engine (which the variant tests
check against float64 definitions)."""

from __future__ import annotations

import pytest
import torch

from hf_efficient_attn import dispatch, fused_path
from hf_efficient_attn.context import build_context
from hf_efficient_attn.layout import make_layout
from hf_efficient_attn.variants import (
    BlockSparseAttention,
    FlashAttention,
    FlashOptions,
    LayerInfo,
    Role,
    SlidingOptions,
    SlidingWindowAttention,
    SparseOptions,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
LAYER = LayerInfo(Role.CAUSAL, "test", 0, 4, 2, 32)


@pytest.fixture(autouse=True)
def kernels_preferred(monkeypatch):
    monkeypatch.setattr(fused_path, "kernels_preferred", lambda device: True)


def qkv(q_len: int, k_len: int):
    generator = torch.Generator().manual_seed(q_len * 31 + k_len)
    shapes = ((2, 4, q_len, 32), (2, 2, k_len, 32), (2, 2, k_len, 32))
    return [torch.randn(shape, generator=generator).to(DEVICE) for shape in shapes]


def route_and_output(variant, q_len, k_len, tokens=None, padding=None):
    query, key, value = qkv(q_len, k_len)
    mask = None if tokens is None and padding is None else make_layout(tokens=tokens or k_len, padding=padding)
    context = build_context(query=query, key=key, attention_mask=mask, causal=True, scaling=32 ** -0.5, dropout=0.0,
                            cache_window=variant.cache_window(), position_ids=None, native_window=None)
    pattern = variant.kernel_mask(context) if hasattr(variant, "kernel_mask") else fused_path.KernelMask()
    route, _ = dispatch.choose(query, key, value, context, variant.options.backend, pattern)
    with torch.no_grad():
        output = variant(query, key, value, context)
        reference = variant.__class__(type(variant.options)(**{**variant.options.to_dict(), "backend": "reference"}),
                                      LAYER)(query, key, value, context)
    return route, output, reference


CASES = {
    "exact prefill": (lambda: FlashAttention(FlashOptions(), LAYER), 64, 64, {}, "sdpa"),
    "window narrower than the keys": (lambda: SlidingWindowAttention(SlidingOptions(window=16), LAYER), 64, 64, {},
                                      "triton"),
    "window covering the keys": (lambda: SlidingWindowAttention(SlidingOptions(window=64), LAYER), 64, 64, {}, "sdpa"),
    "decode over a bounded cache": (lambda: SlidingWindowAttention(SlidingOptions(window=16, sink_tokens=4), LAYER),
                                    1, 20, {"tokens": 200}, "sdpa"),
    "decode with padding": (lambda: FlashAttention(FlashOptions(), LAYER), 1, 40,
                            {"padding": torch.arange(40).expand(2, 40).ge(torch.tensor([[0], [5]])).to(DEVICE)},
                            "triton"),
    "sparse layout": (lambda: BlockSparseAttention(SparseOptions(block_size=16, local_blocks=1, global_blocks=1),
                                                   LAYER), 64, 64, {}, "triton"),
    "decode under a layout": (lambda: BlockSparseAttention(SparseOptions(block_size=16, local_blocks=2, global_blocks=1,
                                                                        random_blocks=1), LAYER), 1, 200, {}, "gather"),
    "decode under a layout with a padded key": (
        lambda: BlockSparseAttention(SparseOptions(block_size=16, local_blocks=2, global_blocks=1, random_blocks=1),
                                     LAYER), 1, 200, {"padding": torch.arange(200).expand(2, 200).ne(
                                         torch.tensor([[-1], [7]])).to(DEVICE)}, "triton"),
    "dense layout": (lambda: BlockSparseAttention(SparseOptions(block_size=64), LAYER), 64, 64, {}, "sdpa"),
    "forced kernels": (lambda: FlashAttention(FlashOptions(backend="triton"), LAYER), 64, 64, {}, "triton"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_route_and_result(name):
    make, q_len, k_len, extra, expected = CASES[name]
    route, output, reference = route_and_output(make(), q_len, k_len, **extra)
    assert route == expected
    torch.testing.assert_close(output, reference, atol=2e-5, rtol=0)
