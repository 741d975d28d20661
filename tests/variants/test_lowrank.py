"""`lowrank` (Linformer) against its float64 formula, its segment-mean initialisation and its errors."""

from __future__ import annotations

import pytest
import torch
from spec import dense_attention
from variant_helpers import context, layer, padding_mask, qkv

from hf_efficient_attn.variants import LinformerAttention, LowRankOptions, Role, VariantError


def build(rank: int = 6, length: int = 30, share_kv: bool = False, seed: int = 0) -> LinformerAttention:
    variant = LinformerAttention(LowRankOptions(rank=rank, share_kv=share_kv), layer(Role.BIDIRECTIONAL, sequence_length=length))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in variant.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return variant


def linformer(query, key, value, key_projection, value_projection, padding, scaling):
    """softmax(Q (E K)ᵀ s) (F V) with padded keys and values zeroed, in float64."""
    length = key.shape[-2]
    real = torch.ones(key.shape[0], length, dtype=torch.bool) if padding is None else padding
    real = real[:, None, :, None].double()
    projected_key = key_projection[:, :length].double() @ (key.double() * real)
    projected_value = value_projection[:, :length].double() @ (value.double() * real)
    everything = torch.ones(1, 1, 1, key_projection.shape[0], dtype=torch.bool)
    return dense_attention(query, projected_key, projected_value, everything, scaling)


@pytest.mark.parametrize("side", [None, "left", "right"])
@pytest.mark.parametrize("key_length", [30, 22])
@pytest.mark.parametrize("share_kv", [False, True])
def test_matches_linformer_formula(side, key_length, share_kv):
    query, key, value = qkv(q_len=key_length, seed=1)
    padding = padding_mask(2, key_length, side, [0, 5])
    ctx = context(key_length, key_length, causal=False, padding=padding)
    variant = build(share_kv=share_kv)
    value_projection = variant.key_projection if share_kv else variant.value_projection
    expected = linformer(query, key, value, variant.key_projection, value_projection, padding, ctx.scaling)
    assert (variant(query, key, value, ctx) - expected).abs().max() < 1e-10


def test_cross_attention_queries_of_another_length():
    query, _, _ = qkv(q_len=7, seed=2)
    _, key, value = qkv(q_len=30, seed=3)
    variant = build()
    ctx = context(7, 30, causal=False)
    expected = linformer(query, key, value, variant.key_projection, variant.value_projection, None, ctx.scaling)
    assert (variant(query, key, value, ctx) - expected).abs().max() < 1e-10


def test_segment_mean_initialisation():
    variant = LinformerAttention(LowRankOptions(rank=4), layer(Role.BIDIRECTIONAL, sequence_length=10))
    projection = variant.key_projection
    assert isinstance(projection, torch.nn.Parameter) and projection.shape == (4, 10)
    assert torch.allclose(projection.sum(-1), torch.ones(4))
    segments = [row.nonzero().squeeze(-1).tolist() for row in projection]
    assert segments == [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9]]
    assert torch.equal(variant.value_projection, projection)
    assert variant.value_projection is not projection
    shared = LinformerAttention(LowRankOptions(rank=4, share_kv=True), layer(Role.BIDIRECTIONAL, sequence_length=10))
    assert [name for name, _ in shared.named_parameters()] == ["key_projection"]


def test_longer_input_than_built_for_raises():
    query, key, value = qkv(q_len=31)
    with pytest.raises(VariantError, match="built for at most 30 keys .* but got 31"):
        build()(query, key, value, context(31, 31, causal=False))


def test_gradients_reach_both_projections():
    query, key, value = qkv(q_len=30, seed=4, dtype=torch.float32)
    variant = build()
    variant.float()(query, key, value, context(30, 30, causal=False)).square().sum().backward()
    assert variant.key_projection.grad.abs().sum() > 0 and variant.value_projection.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("options", "info", "message"),
    [
        (LowRankOptions(rank=8), layer(Role.BIDIRECTIONAL, sequence_length=None), "needs a fixed key length"),
        (LowRankOptions(rank=40), layer(Role.BIDIRECTIONAL, sequence_length=30),
         "rank 40 exceeds the sequence length 30 of test layers; choose rank <= 30"),
        (LowRankOptions(rank=8), layer(Role.CAUSAL, sequence_length=30), "cannot run on causal self-attention"),
    ],
)
def test_check_layer_errors(options, info, message):
    with pytest.raises(VariantError, match=message):
        LinformerAttention.check_layer(options, info)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"rank": 0}, "`rank` must be an integer >= 1, got 0"), ({"share_kv": "yes"}, "`share_kv` must be True or False")],
)
def test_bad_options_raise(options, message):
    with pytest.raises(VariantError, match=message):
        LowRankOptions(**options).validate()
