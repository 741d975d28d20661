"""`performer` against the FAVOR+ formula in float64, and the chunked causal engine against naive sums."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from spec import dense_attention
from variant_helpers import causal_padding_visible, context, layer, naive_linear_attention, padding_mask, qkv

from hf_efficient_attn import patch_model
from hf_efficient_attn.api import patched_variants
from hf_efficient_attn.variants import PerformerAttention, PerformerOptions, Role, VariantError
from hf_efficient_attn.variants.kernelized import kernelized_attention


def favor_features(x, projection, scaling):
    """FAVOR+ positive random features as in the paper: exp(w·x - |x|²/2) / √M, with x scaled by √scaling."""
    x = x.double() * scaling**0.5
    projection = projection.double()
    return torch.exp(x @ projection.T - (x * x).sum(-1, keepdim=True) / 2) / projection.shape[0] ** 0.5


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("side", [None, "left", "right"])
def test_matches_favor_formula(causal, side):
    query, key, value = qkv(q_len=150, seed=1, scale=0.6)
    padding = padding_mask(2, 150, side, [0, 20])
    ctx = context(150, 150, causal=causal, padding=padding)
    variant = PerformerAttention(PerformerOptions(num_features=32), layer(dim=8))
    expected = naive_linear_attention(
        favor_features(query, variant.projection, ctx.scaling),
        favor_features(key, variant.projection, ctx.scaling),
        value,
        causal_padding_visible(ctx.query_positions, ctx.key_positions, causal, padding),
    )
    got = variant(query, key, value, ctx)
    assert (got - expected).abs().max() < 1e-10


def test_kv_cache_queries_match_last_rows():
    query, key, value = qkv(q_len=90, seed=2)
    variant = PerformerAttention(PerformerOptions(num_features=16), layer(dim=8))
    full = variant(query, key, value, context(90, 90, causal=True))
    cached = variant(query[:, :, -3:], key, value, context(3, 90, causal=True))
    assert (cached - full[:, :, -3:]).abs().max() < 1e-10


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_chunked_causal_equals_naive_with_gapped_key_positions(chunk_size):
    """Keys at positions with a gap (sinks + a recent tail, as a bounded cache returns) and later queries."""
    generator = torch.Generator().manual_seed(3)
    key_positions = torch.cat([torch.arange(3), torch.arange(20, 40)])
    ctx = context(15, 23, causal=True, key_positions=key_positions)
    ctx = dataclasses.replace(ctx, query_positions=torch.arange(25, 40))
    query_features = torch.rand(2, 4, 15, 6, generator=generator, dtype=torch.float64)
    key_features = torch.rand(2, 2, 23, 6, generator=generator, dtype=torch.float64)
    value = torch.randn(2, 2, 23, 5, generator=generator, dtype=torch.float64)
    visible = causal_padding_visible(ctx.query_positions, key_positions, True, None)
    expected = naive_linear_attention(query_features, key_features, value, visible)
    got = kernelized_attention(query_features, key_features, value, ctx, chunk_size=chunk_size)
    assert (got - expected).abs().max() < 1e-12


def test_approximates_softmax_attention_with_many_features():
    query, key, value = qkv(batch=1, q_heads=2, kv_heads=2, q_len=24, seed=4, scale=0.5)
    ctx = context(24, 24, causal=False)
    exact = dense_attention(query, key, value, torch.ones(1, 1, 24, 24, dtype=torch.bool), ctx.scaling)
    few = PerformerAttention(PerformerOptions(num_features=8), layer(Role.BIDIRECTIONAL, 2, 2))(query, key, value, ctx)
    many = PerformerAttention(PerformerOptions(num_features=4096), layer(Role.BIDIRECTIONAL, 2, 2))(
        query, key, value, ctx
    )
    assert (many - exact).abs().max() < 0.05
    assert (many - exact).abs().mean() < (few - exact).abs().mean()


def test_features_are_orthogonal_seeded_and_saved():
    variant = PerformerAttention(PerformerOptions(num_features=20, seed=5), layer(dim=8))
    projection = variant.projection.double()
    block = projection[:8]
    gram = block @ block.T
    assert (gram - torch.diag(gram.diagonal())).abs().max() < 1e-5
    assert projection.shape == (20, 8)
    assert "projection" in variant.state_dict()
    again = PerformerAttention(PerformerOptions(num_features=20, seed=5), layer(dim=8))
    assert torch.equal(again.projection, variant.projection)
    other = PerformerAttention(PerformerOptions(num_features=20, seed=6), layer(dim=8))
    assert not torch.equal(other.projection, variant.projection)


def test_large_logits_stay_finite_and_masked_rows_are_zero():
    query, key, value = qkv(q_len=16, seed=6, scale=30.0)
    padding = padding_mask(2, 16, "left", [0, 4])
    variant = PerformerAttention(PerformerOptions(num_features=16), layer(dim=8))
    got = variant(query, key, value, context(16, 16, causal=True, padding=padding))
    assert torch.isfinite(got).all()
    assert torch.equal(got[1, :, :4], torch.zeros_like(got[1, :, :4]))


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-4), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_low_precision_follows_float64(dtype, tolerance):
    query, key, value = qkv(q_len=40, seed=7)
    variant = PerformerAttention(PerformerOptions(num_features=16), layer(dim=8))
    ctx = context(40, 40, causal=True)
    reference = variant(query, key, value, ctx)
    got = variant.to(dtype)(query.to(dtype), key.to(dtype), value.to(dtype), ctx)
    assert got.dtype == dtype
    assert (got.double() - reference).abs().max() < tolerance


def test_bfloat16_model_keeps_float32_features_and_float64_accuracy(llama):
    """Patched into a bf16 model, the directions stay float32 and the output is the float64 value rounded once."""
    directions = patched_variants(patch_model(copy.deepcopy(llama), "performer", num_features=64))[0].projection
    model = patch_model(copy.deepcopy(llama).to(torch.bfloat16), "performer", num_features=64)
    variant = patched_variants(model)[0]
    assert variant.projection.dtype == torch.float32
    assert torch.equal(variant.projection, directions)

    query, key, value = qkv(q_len=64, seed=3, scale=2.0, dtype=torch.bfloat16)
    ctx = context(64, 64, causal=True)
    expected = naive_linear_attention(
        favor_features(query, directions, ctx.scaling),
        favor_features(key, directions, ctx.scaling),
        value,
        causal_padding_visible(ctx.query_positions, ctx.key_positions, True, None),
    )
    got = variant(query, key, value, ctx)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), expected, rtol=2**-7, atol=1e-4)


def test_casting_a_patched_model_leaves_features_float32(llama):
    """``model.to(bfloat16)`` casts the weights, not the random directions."""
    model = patch_model(copy.deepcopy(llama), "performer", num_features=16)
    originals = [variant.projection for variant in patched_variants(model)]
    model.to(torch.bfloat16)
    assert all(parameter.dtype == torch.bfloat16 for parameter in model.parameters())
    for variant, original in zip(patched_variants(model), originals, strict=True):
        assert variant.projection.dtype == torch.float32
        assert torch.equal(variant.projection, original)


def test_refuses_packed_documents():
    query, key, value = qkv(q_len=8)
    ctx = context(8, 8, causal=True)
    documents = torch.zeros(2, 8, dtype=torch.long)
    ctx = dataclasses.replace(ctx, query_documents=documents, key_documents=documents)
    with pytest.raises(VariantError, match="packed-document"):
        PerformerAttention(PerformerOptions(num_features=8), layer(dim=8))(query, key, value, ctx)


@pytest.mark.parametrize(("options", "message"), [({"num_features": 0}, "`num_features` must be an integer >= 1")])
def test_bad_options_raise(options, message):
    with pytest.raises(VariantError, match=message):
        PerformerOptions(**options).validate()
