"""neighbourhood_attention (the 2-D neighbourhood kernels) against a float64 reference built from the pattern's
definition: outputs and dq, dk, dv; the `sliding` variant's chunked engine; errors; torch.compile over the op."""

from __future__ import annotations

import warnings

import pytest
import torch
from kernel_reference import DEVICE, rand, rel_err, tolerance

from hf_efficient_attn.context import build_context
from hf_efficient_attn.kernels import KernelInputError, neighbourhood, neighbourhood_attention, ops
from hf_efficient_attn.kernels.strides import dense_inputs
from hf_efficient_attn.kernels.tuning import TunedKernel
from hf_efficient_attn.variants import LayerInfo, Role, SlidingOptions, SlidingWindowAttention


def neighbourhood_mask(n, grid, *, reach, prefix, leading, global_queries):
    """bool [N, N] from the definition: cells within ``reach`` rows and columns, keys < leading, queries <
    global_queries."""
    rows, cols = grid
    assert n == prefix + rows * cols
    i = torch.arange(n)
    cell = i - prefix
    r, c = cell.div(cols, rounding_mode="floor"), cell % cols
    is_cell = i >= prefix
    near = (is_cell[:, None] & is_cell[None, :] & ((r[:, None] - r[None, :]).abs() <= reach)
            & ((c[:, None] - c[None, :]).abs() <= reach))
    return near | (i < leading)[None, :] | (i < global_queries)[:, None]


def reference(q, k, v, mask, scale):
    """float64 softmax attention under ``mask`` [N, N]; rows with no visible key are 0. Differentiable."""
    group = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    mask = mask.to(q.device)
    s = (q.double() @ k.transpose(-1, -2)) * scale
    p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)
    p = torch.where(mask.any(-1, keepdim=True), p, torch.zeros_like(p))
    return p @ v


def run_case(grid, prefix, reach, *, leading=None, global_queries=None, batch=1, hq=2, hkv=1, d=32,
             dtype=torch.float32, seed=0):
    leading = prefix if leading is None else leading
    global_queries = prefix if global_queries is None else global_queries
    n = prefix + grid[0] * grid[1]
    gen = torch.Generator().manual_seed(seed)
    q = rand(batch, hq, n, d, dtype=dtype, generator=gen)
    k = rand(batch, hkv, n, d, dtype=dtype, generator=gen)
    v = rand(batch, hkv, n, d, dtype=dtype, generator=gen)
    scale = d**-0.5
    out = neighbourhood_attention(q, k, v, scale=scale, grid=grid, reach=reach, prefix_tokens=prefix,
                                  leading_keys=leading, global_queries=global_queries)
    assert out.shape == q.shape and out.dtype == q.dtype
    do = torch.randn(out.shape, generator=gen).to(device=DEVICE, dtype=dtype)
    grads = torch.autograd.grad(out, (q, k, v), do)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    mask = neighbourhood_mask(n, grid, reach=reach, prefix=prefix, leading=leading, global_queries=global_queries)
    ref = reference(*leaves, mask, scale)
    ref_grads = torch.autograd.grad(ref, leaves, do.double())
    for name, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), strict=True):
        assert torch.isfinite(got).all(), f"{name} has NaN/inf (a row no program wrote?)"
        if want.abs().max() == 0:  # dq, dk when every query sees only itself
            assert got.abs().max() < 1e-3, f"{name} should be zero, max |{name}| = {got.abs().max():.2e}"
            continue
        err = rel_err(got, want)
        assert err < tolerance(dtype), f"{name}: relative error {err:.2e} > {tolerance(dtype):.0e}"
    return mask


# ---------------------------------------------------------------------------- grids, prefixes, reaches

GRIDS = [(5, 7), (6, 6), (3, 9)]
REACHES = [0, 1, 2, 9]  # 9 >= max(rows, cols) of every grid: full attention


@pytest.mark.parametrize("reach", REACHES)
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_grids_and_reaches(grid, reach):
    prefix = (GRIDS.index(grid) + REACHES.index(reach)) % 3  # each grid and each reach meets prefixes 0, 1, 2
    mask = run_case(grid, prefix, reach, seed=7 * prefix + reach)
    if reach >= max(grid):
        assert mask.all()


@pytest.mark.parametrize(("grid", "prefix", "reach", "leading", "global_queries"), [
    ((5, 7), 1, 1, 4, 3),  # leading keys and global queries that are grid cells
    ((6, 6), 0, 2, 9, 0),  # leading keys over a grid row and a half, no global query
    ((3, 9), 2, 1, 2, 13),  # global queries over a grid row and more
    ((6, 6), 1, 0, 20, 20),  # more leading keys than one 1-D tile; reach 0: cells see themselves and the leaders
    ((5, 7), 0, 2, 0, 35),  # every query global: dense attention
])
def test_leading_keys_and_global_queries_beyond_the_prefix(grid, prefix, reach, leading, global_queries):
    run_case(grid, prefix, reach, leading=leading, global_queries=global_queries, seed=leading + global_queries)


def test_grouped_query_heads_and_batch():
    run_case((5, 7), 1, 2, leading=2, global_queries=3, batch=2, hq=4, hkv=2, seed=11)


@pytest.mark.parametrize("d", [32, 48])
def test_head_dims(d):
    run_case((6, 6), 1, 1, d=d, seed=d)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    run_case((5, 7), 1, 2, leading=2, global_queries=2, batch=2, d=48 if dtype == torch.bfloat16 else 32,
             dtype=dtype, seed=3)


@pytest.mark.parametrize(("forward", "key_values"), [
    ((2, 8, 8, 2), (2, 8, 1, 16)),  # (TQR, TQC, TKR, TKC) of the forward and dQ kernels, then of the dK/dV kernel
    ((4, 8, 8, 4), (8, 4, 4, 4)),
], ids=["flat-and-tall", "rectangles"])
def test_other_tile_shapes(monkeypatch, forward, key_values):
    """Tiles of other shapes than the interpreter's 4 x 4 (the GPU configurations differ from it): query and key
    tiles that differ, tiles wider than the grid, key tiles laid from a corner that is not on their tiling."""
    import triton

    def kernel(fn, tiles):
        config = triton.Config(dict(zip(("TQR", "TQC", "TKR", "TKC"), tiles, strict=True)), num_warps=4, num_stages=1)
        return TunedKernel(fn, [config], neighbourhood._KEY)

    monkeypatch.setattr(neighbourhood, "_fwd", kernel(neighbourhood._nbhd_fwd, forward))
    monkeypatch.setattr(neighbourhood, "_dq", kernel(neighbourhood._nbhd_bwd_dq, forward))
    monkeypatch.setattr(neighbourhood, "_dkdv", kernel(neighbourhood._nbhd_bwd_dkdv, key_values))
    run_case((6, 7), 1, 2, leading=3, global_queries=2, seed=9)


def test_inference_needs_no_autograd():
    gen = torch.Generator().manual_seed(5)
    q, k, v = (rand(1, 2, 31, 32, generator=gen, requires_grad=False) for _ in range(3))
    with torch.no_grad():
        out = neighbourhood_attention(q, k, v, scale=0.2, grid=(5, 6), reach=1, prefix_tokens=1)
    mask = neighbourhood_mask(31, (5, 6), reach=1, prefix=1, leading=1, global_queries=1)
    torch.testing.assert_close(out.double(), reference(q, k, v, mask, 0.2), atol=1e-5, rtol=1e-5)


def test_strided_inputs():
    """q, k, v as head-major views of token-major [B, N, H, D] tensors, which the kernels take without a copy."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = (rand(2, 31, 2, 32, generator=gen, requires_grad=False).transpose(1, 2).requires_grad_()
               for _ in range(3))
    assert not q.is_contiguous() and dense_inputs(q) is q
    out = neighbourhood_attention(q, k, v, scale=0.2, grid=(5, 6), reach=1, prefix_tokens=1, global_queries=2)
    do = torch.randn(out.shape, generator=gen).to(DEVICE)
    grads = torch.autograd.grad(out, (q, k, v), do)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = reference(*leaves, neighbourhood_mask(31, (5, 6), reach=1, prefix=1, leading=1, global_queries=2), 0.2)
    for got, want in zip((out, *grads), (ref, *torch.autograd.grad(ref, leaves, do.double())), strict=True):
        assert rel_err(got, want) < tolerance(torch.float32)


# ---------------------------------------------------------------------------- the sliding variant


def test_equals_the_sliding_variants_chunked_engine():
    """`SlidingWindowAttention(neighbourhood="2d")` on its reference (chunked) engine: the kernel with
    L = max(sinks, globals, prefix) and G = max(globals, prefix), over two chunks of queries."""
    grid, prefix, window, sinks, global_tokens = (8, 9), 1, 3, 4, 2
    n, heads = prefix + grid[0] * grid[1], 2
    layer = LayerInfo(Role.BIDIRECTIONAL, "test", 0, heads, heads, 32, grid=grid, prefix_tokens=prefix)
    variant = SlidingWindowAttention(SlidingOptions(window=window, sink_tokens=sinks, global_tokens=global_tokens,
                                                    neighbourhood="2d", backend="reference"), layer).to(DEVICE)
    assert variant._chunk() < n
    gen = torch.Generator().manual_seed(2)
    q, k, v = (rand(1, heads, n, 32, generator=gen, requires_grad=False) for _ in range(3))
    context = build_context(query=q, key=k, attention_mask=None, causal=False, scaling=0.25, dropout=0.0,
                            cache_window=None, position_ids=None, native_window=None)
    expected = variant(q.double(), k.double(), v.double(), context)
    out = neighbourhood_attention(q, k, v, scale=0.25, grid=grid, reach=window - 1, prefix_tokens=prefix,
                                  leading_keys=max(sinks, global_tokens, prefix),
                                  global_queries=max(global_tokens, prefix))
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- errors


def t(*shape):
    return torch.randn(*shape).to(DEVICE)


@pytest.mark.parametrize(("q", "kv", "kwargs", "words"), [
    ((1, 2, 30, 32), (1, 2, 30, 32), {}, ["30 tokens", "1 + 5 * 6 = 31"]),
    ((1, 2, 31, 32), (1, 2, 31, 32), {"reach": -1}, ["reach", ">= 0", "-1"]),
    ((1, 4, 31, 32), (1, 3, 31, 32), {}, ["multiple", "4", "3"]),
    ((1, 2, 31, 32), (1, 2, 31, 32), {"leading_keys": 0}, ["leading_keys=0", "prefix_tokens=1"]),
    ((1, 2, 31, 32), (1, 2, 31, 32), {"global_queries": 32}, ["global_queries=32", "31"]),
    ((1, 2, 31, 32), (1, 2, 31, 32), {"grid": (5,)}, ["grid", "pair"]),
    ((1, 2, 31, 32), (1, 2, 31, 32), {"scale": 0.0}, ["scale", "positive"]),
    ((1, 2, 31, 512), (1, 2, 31, 512), {}, ["head_dim=512"]),
    ((1, 2, 31, 32), (1, 2, 30, 32), {}, ["same tokens"]),
])
def test_errors_name_the_argument(q, kv, kwargs, words):
    args = {"scale": 0.1, "grid": (5, 6), "reach": 1, "prefix_tokens": 1, **kwargs}
    for call in (neighbourhood_attention, ops.neighbourhood_attention):
        with pytest.raises(KernelInputError) as err:
            call(t(*q), t(*kv), t(*kv), **args)
        assert all(w in str(err.value) for w in words), str(err.value)


# ---------------------------------------------------------------------------- torch.compile


def test_compiled_op_equals_eager():
    arguments = dict(scale=0.2, grid=(5, 6), reach=1, prefix_tokens=1, leading_keys=2, global_queries=3)

    def step(q, k, v):
        return ops.neighbourhood_attention(q, k, v, **arguments)

    gen = torch.Generator().manual_seed(4)
    q = rand(1, 2, 31, 32, generator=gen)
    k, v = rand(1, 1, 31, 32, generator=gen), rand(1, 1, 31, 32, generator=gen)
    do = torch.randn(1, 2, 31, 32, generator=gen).to(DEVICE)
    eager = step(q, k, v)
    eager_grads = torch.autograd.grad(eager, (q, k, v), do)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch._dynamo.explain(step)(q, k, v).graph_break_count == 0
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    out = compiled(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), do)
    torch.testing.assert_close(out, eager, atol=1e-6, rtol=0)
    for got, want in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
