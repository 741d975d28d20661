"""Property tests over shapes and layouts: sparse against its definition, chunked prefix sums against naive sums."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spec import dense_attention
from test_sparse import run, sparse_mask
from variant_helpers import causal_padding_visible, context, naive_linear_attention, padding_mask, qkv

from hf_efficient_attn.variants import SparseOptions
from hf_efficient_attn.variants.kernelized import kernelized_attention

SETTINGS = settings(max_examples=25, deadline=None)


@SETTINGS
@given(
    length=st.integers(1, 30),
    block_size=st.integers(1, 7),
    local=st.integers(0, 4),
    global_blocks=st.integers(0, 2),
    stride=st.integers(0, 4),
    causal=st.booleans(),
    side=st.sampled_from([None, "left", "right"]),
    gap=st.integers(0, 10),
    kv_heads=st.sampled_from([1, 2, 4]),
    queries=st.integers(1, 30),
)
def test_sparse_matches_definition(length, block_size, local, global_blocks, stride, causal, side, gap, kv_heads, queries):
    queries = min(queries, length) if causal else length
    local = local if local or global_blocks or stride else 1
    query, key, value = qkv(q_len=length, kv_heads=kv_heads, seed=length)
    query = query[:, :, length - queries :]
    padding = padding_mask(2, length, side, [0, min(gap, length)])
    ctx = context(queries, length, causal=causal, padding=padding)
    options = SparseOptions(block_size=block_size, local_blocks=local, global_blocks=global_blocks, stride_blocks=stride)
    mask = sparse_mask(
        ctx.query_positions, ctx.key_positions, padding, causal=causal, block_size=block_size,
        local=local, global_blocks=global_blocks, stride=stride,
    )
    expected = dense_attention(query, key, value, mask, ctx.scaling)
    assert (run(options, query, key, value, ctx) - expected).abs().max() < 1e-10


@SETTINGS
@given(
    length=st.integers(1, 40),
    queries=st.integers(1, 40),
    chunk_size=st.integers(1, 16),
    kv_heads=st.sampled_from([1, 2]),
    groups=st.sampled_from([1, 3]),
    side=st.sampled_from([None, "left", "right"]),
    gap=st.integers(0, 40),
)
def test_chunked_prefix_sums_match_naive_causal_sums(length, queries, chunk_size, kv_heads, groups, side, gap):
    queries = min(queries, length)
    generator = torch.Generator().manual_seed(length * 41 + queries)
    query_features = torch.rand(2, kv_heads * groups, queries, 5, generator=generator, dtype=torch.float64)
    key_features = torch.rand(2, kv_heads, length, 5, generator=generator, dtype=torch.float64)
    value = torch.randn(2, kv_heads, length, 3, generator=generator, dtype=torch.float64)
    padding = padding_mask(2, length, side, [0, min(gap, length)])
    ctx = context(queries, length, causal=True, padding=padding)
    visible = causal_padding_visible(ctx.query_positions, ctx.key_positions, True, padding)
    expected = naive_linear_attention(query_features, key_features, value, visible)
    got = kernelized_attention(query_features, key_features, value, ctx, chunk_size=chunk_size)
    assert torch.isfinite(got).all()
    assert (got - expected).abs().max() < 1e-12
