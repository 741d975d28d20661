"""`sliding` against its float64 definition, directly at the variant level."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from spec import dense_attention, grid_mask, sliding_mask

from hf_efficient_attn.context import build_context
from hf_efficient_attn.layout import make_layout
from hf_efficient_attn.variants import LayerInfo, Role, SlidingOptions, SlidingWindowAttention


def make_variant(role: Role, heads: int = 4, kv_heads: int = 2, grid=None, prefix=0, **options):
    layer = LayerInfo(role, "test", 0, heads, kv_heads, 8, grid=grid, prefix_tokens=prefix)
    return SlidingWindowAttention(SlidingOptions(**options), layer)


def qkv(batch, heads, kv_heads, q_len, k_len, dim=8, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, heads, q_len, dim, generator=generator, dtype=dtype)
    key = torch.randn(batch, kv_heads, k_len, dim, generator=generator, dtype=dtype)
    value = torch.randn(batch, kv_heads, k_len, dim, generator=generator, dtype=dtype)
    return query, key, value


def run(variant, query, key, value, *, causal, padding=None, query_offset=None, chunk=None):
    """The variant on one call, with the layout a model would build: ``query_offset`` tokens before the queries."""
    layout = None
    if padding is not None or query_offset is not None:
        tokens = (query_offset or 0) + query.shape[-2] if causal else key.shape[-2]
        layout = make_layout(tokens=tokens, padding=padding)
    context = build_context(
        query=query,
        key=key,
        attention_mask=layout,
        causal=causal,
        scaling=0.35,
        dropout=0.0,
        cache_window=variant.cache_window(),
        position_ids=None,
        native_window=None,
    )
    return variant(query, key, value, context), context


def test_causal_window_with_sinks_matches_definition():
    variant = make_variant(Role.CAUSAL, window=5, sink_tokens=2)
    query, key, value = qkv(2, 4, 2, 37, 37)
    output, _ = run(variant, query, key, value, causal=True)
    mask = sliding_mask(range(37), range(37), window=5, causal=True, sinks=2)
    torch.testing.assert_close(output, dense_attention(query, key, value, mask, 0.35), rtol=0, atol=1e-12)


def test_bidirectional_window_with_global_tokens_matches_definition():
    variant = make_variant(Role.BIDIRECTIONAL, window=4, global_tokens=3)
    query, key, value = qkv(1, 4, 4, 29, 29)
    output, _ = run(variant, query, key, value, causal=False)
    mask = sliding_mask(range(29), range(29), window=4, causal=False, global_tokens=3)
    torch.testing.assert_close(output, dense_attention(query, key, value, mask, 0.35), rtol=0, atol=1e-12)


def test_two_dimensional_neighbourhood_matches_definition():
    grid = (5, 6)
    variant = make_variant(Role.BIDIRECTIONAL, heads=2, kv_heads=2, grid=grid, prefix=1, window=2, neighbourhood="2d")
    length = 1 + grid[0] * grid[1]
    query, key, value = qkv(2, 2, 2, length, length)
    output, _ = run(variant, query, key, value, causal=False)
    mask = grid_mask(length, grid, prefix=1, window=2)
    torch.testing.assert_close(output, dense_attention(query, key, value, mask, 0.35), rtol=0, atol=1e-12)


def test_left_padding_counts_sinks_from_each_rows_first_real_token():
    variant = make_variant(Role.CAUSAL, window=4, sink_tokens=2)
    query, key, value = qkv(2, 4, 2, 20, 20)
    padding = torch.ones(2, 20, dtype=torch.bool)
    padding[1, :6] = False
    output, _ = run(variant, query, key, value, causal=True, padding=padding)
    mask = sliding_mask(range(20), range(20), window=4, causal=True, sinks=2, starts=[0, 6], key_padding=padding)
    expected = dense_attention(query, key, value, mask, 0.35)
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-12)
    assert torch.equal(output[1, :, :6], torch.zeros_like(output[1, :, :6])), "fully masked rows must be zeros"


def test_trimmed_cache_keys_are_placed_at_their_absolute_positions():
    """A decode step against a sink+window cache sees the same keys as the full sequence would."""
    window, sinks, total = 5, 2, 30
    variant = make_variant(Role.CAUSAL, window=window, sink_tokens=sinks)
    query, key, value = qkv(1, 4, 2, total, total)
    full_output, _ = run(variant, query, key, value, causal=True)
    kept = torch.cat([torch.arange(sinks), torch.arange(total - window, total)])
    step_output, context = run(
        variant, query[..., -1:, :], key[..., kept, :], value[..., kept, :], causal=True, query_offset=total - 1
    )
    assert context.key_positions.tolist() == kept.tolist()
    torch.testing.assert_close(step_output, full_output[..., -1:, :], rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(1, 40),
    window=st.integers(1, 45),
    sinks=st.integers(0, 4),
    causal=st.booleans(),
    groups=st.sampled_from([1, 2, 4]),
    chunk=st.sampled_from([None, 1, 7]),
)
def test_property_sliding_matches_definition(length, window, sinks, causal, groups, chunk):
    variant = make_variant(Role.CAUSAL if causal else Role.BIDIRECTIONAL, heads=4, kv_heads=4 // groups, window=window, sink_tokens=sinks)
    query, key, value = qkv(2, 4, 4 // groups, length, length, seed=length)
    layout = None
    context = build_context(
        query=query, key=key, attention_mask=layout, causal=causal, scaling=0.35, dropout=0.0,
        cache_window=None, position_ids=None, native_window=None,
    )
    from hf_efficient_attn.masked import masked_attention

    output = masked_attention(query, key, value, context, rule=variant, chunk_size=chunk)
    mask = sliding_mask(range(length), range(length), window=window, causal=causal, sinks=sinks)
    torch.testing.assert_close(output, dense_attention(query, key, value, mask, 0.35), rtol=0, atol=1e-12)


def test_gradients_match_definition():
    variant = make_variant(Role.CAUSAL, window=3, sink_tokens=1)
    query, key, value = (t.requires_grad_() for t in qkv(1, 4, 2, 15, 15))
    output, _ = run(variant, query, key, value, causal=True)
    grads = torch.autograd.grad(output.square().sum(), (query, key, value))
    mask = sliding_mask(range(15), range(15), window=3, causal=True, sinks=1)
    expected = dense_attention(query, key, value, mask, 0.35)
    expected_grads = torch.autograd.grad(expected.square().sum(), (query, key, value))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
