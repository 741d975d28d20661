"""`linear` (Hedgehog) against its float64 formula, its initialisation and its trainable map."""

from __future__ import annotations

import pytest
import torch
from variant_helpers import causal_padding_visible, context, layer, naive_linear_attention, padding_mask, qkv

from hf_efficient_attn.variants import HedgehogLinearAttention, LinearOptions, VariantError


def hedgehog_features(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """φ(x) = softmax([xW, -xW]) per head, ``x`` ``[b, h, n, d]`` and ``weight`` ``[h, d, f]``."""
    projected = torch.einsum("bhnd,hdf->bhnf", x.double(), weight.double())
    return torch.softmax(torch.cat([projected, -projected], -1), -1)


def perturbed(variant: HedgehogLinearAttention, seed: int = 0) -> HedgehogLinearAttention:
    with torch.no_grad():
        variant.weight.add_(0.3 * torch.randn(variant.weight.shape, generator=torch.Generator().manual_seed(seed)))
    return variant


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("side", [None, "left", "right"])
@pytest.mark.parametrize("feature_dim", [None, 5, 12])
def test_matches_hedgehog_formula(causal, side, feature_dim):
    query, key, value = qkv(q_len=140, seed=1)
    padding = padding_mask(2, 140, side, [0, 17])
    ctx = context(140, 140, causal=causal, padding=padding)
    variant = perturbed(HedgehogLinearAttention(LinearOptions(feature_dim=feature_dim), layer(dim=8)))
    query_weight = variant.weight.repeat_interleave(2, 0)  # query head h shares kv head h // 2's map
    expected = naive_linear_attention(
        hedgehog_features(query, query_weight),
        hedgehog_features(key, variant.weight),
        value,
        causal_padding_visible(ctx.query_positions, ctx.key_positions, causal, padding),
    )
    got = variant(query, key, value, ctx)
    assert (got - expected).abs().max() < 1e-10


def test_kv_cache_queries_match_last_rows():
    query, key, value = qkv(q_len=70, seed=2)
    variant = perturbed(HedgehogLinearAttention(LinearOptions(), layer(dim=8)))
    full = variant(query, key, value, context(70, 70, causal=True))
    cached = variant(query[:, :, -2:], key, value, context(2, 70, causal=True))
    assert (cached - full[:, :, -2:]).abs().max() < 1e-12


def test_identity_like_initialisation_and_parameters():
    variant = HedgehogLinearAttention(LinearOptions(), layer(heads=4, kv_heads=2, dim=8))
    assert isinstance(variant.weight, torch.nn.Parameter)
    assert variant.weight.shape == (2, 8, 8)
    assert torch.equal(variant.weight[0], torch.eye(8))
    wide = HedgehogLinearAttention(LinearOptions(feature_dim=12), layer(dim=8)).weight
    assert wide.shape == (2, 8, 12) and torch.equal(wide[1, :, 8:], torch.eye(8)[:, :4])


def test_gradients_reach_the_feature_map():
    query, key, value = qkv(q_len=20, seed=3, dtype=torch.float32)
    query.requires_grad_(True)
    variant = HedgehogLinearAttention(LinearOptions(), layer(dim=8))
    variant(query, key, value, context(20, 20, causal=True)).square().sum().backward()
    assert variant.weight.grad is not None and variant.weight.grad.abs().sum() > 0
    assert query.grad.abs().sum() > 0


def test_bad_options_raise():
    with pytest.raises(VariantError, match="`feature_dim` must be an integer >= 1, got 0"):
        LinearOptions(feature_dim=0).validate()
