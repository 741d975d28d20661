"""`nystrom` against the Nyströmformer formula in float64 (with an exact pseudo-inverse), and its edge cases."""

from __future__ import annotations

import pytest
import torch
from spec import dense_attention
from variant_helpers import causal_padding_visible, context, layer, padding_mask, qkv

from hf_efficient_attn.variants import NystromAttention, NystromOptions, Role, VariantError


def segment_landmarks(x: torch.Tensor, real: torch.Tensor | None, count: int) -> torch.Tensor:
    """Means of ``count`` contiguous segments of each row's real tokens: ``[b, h, count, d]``."""
    batch, _, length, _ = x.shape
    landmarks = torch.zeros(batch, x.shape[1], count, x.shape[-1], dtype=torch.float64)
    for row in range(batch):
        positions = list(range(length)) if real is None else real[row].nonzero().squeeze(-1).tolist()
        for segment in range(count):
            members = [p for r, p in enumerate(positions) if r * count // len(positions) == segment]
            landmarks[row, :, segment] = x[row, :, members].double().mean(-2)
    return landmarks


def nystrom(query, key, value, query_real, key_real, count, scaling):
    """softmax(Q K̃ᵀ s) pinv(softmax(Q̃ K̃ᵀ s)) softmax(Q̃ Kᵀ s) V, float64, exact pseudo-inverse."""
    groups = query.shape[1] // key.shape[1]
    key = key.double().repeat_interleave(groups, 1)
    value = value.double().repeat_interleave(groups, 1)
    query = query.double()
    query_landmarks = segment_landmarks(query, query_real, count)
    key_landmarks = segment_landmarks(key, key_real, count)
    kernel_1 = torch.softmax(query @ key_landmarks.transpose(-1, -2) * scaling, -1)
    kernel_2 = torch.softmax(query_landmarks @ key_landmarks.transpose(-1, -2) * scaling, -1)
    scores = query_landmarks @ key.transpose(-1, -2) * scaling
    if key_real is not None:
        scores = scores.masked_fill(~key_real[:, None, None, :], float("-inf"))
    kernel_3 = torch.softmax(scores, -1)
    return kernel_1 @ torch.linalg.pinv(kernel_2) @ (kernel_3 @ value)


def build(landmarks: int, iterations: int = 40, role: Role = Role.BIDIRECTIONAL) -> NystromAttention:
    return NystromAttention(NystromOptions(num_landmarks=landmarks, pinv_iterations=iterations), layer(role))


@pytest.mark.parametrize("side", [None, "left", "right"])
def test_matches_nystromformer_formula(side):
    query, key, value = qkv(q_len=30, seed=1, scale=2.0)
    padding = padding_mask(2, 30, side, [0, 7])
    ctx = context(30, 30, causal=False, padding=padding)
    expected = nystrom(query, key, value, padding, padding, 6, ctx.scaling)
    assert (build(6)(query, key, value, ctx) - expected).abs().max() < 1e-8


def test_cross_attention_formula():
    query, _, _ = qkv(q_len=9, seed=2, scale=2.0)
    _, key, value = qkv(q_len=30, seed=3, scale=2.0)
    ctx = context(9, 30, causal=False)
    expected = nystrom(query, key, value, None, None, 5, ctx.scaling)
    got = build(5, role=Role.CROSS)(query, key, value, ctx)
    assert (got - expected).abs().max() < 1e-8


@pytest.mark.parametrize("length", [8, 12])
def test_no_more_keys_than_landmarks_is_exact(length):
    query, key, value = qkv(q_len=length, seed=4)
    ctx = context(length, length, causal=False)
    everything = causal_padding_visible(ctx.query_positions, ctx.key_positions, False, None)
    expected = dense_attention(query, key, value, everything, ctx.scaling)
    assert (build(12, iterations=6)(query, key, value, ctx) - expected).abs().max() < 1e-12


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("real_tokens", [24, 5])
def test_padding_does_not_change_real_rows(side, real_tokens):
    """A padded row gives what the same tokens give alone (same landmarks; with few real tokens, near exact)."""
    query, key, value = qkv(q_len=30, seed=5, scale=2.0)
    padding = padding_mask(2, 30, side, [0, 30 - real_tokens])
    variant = build(6)
    batched = variant(query, key, value, context(30, 30, causal=False, padding=padding))
    keep = padding[1]
    alone = variant(query[1:, :, keep], key[1:, :, keep], value[1:, :, keep], context(real_tokens, real_tokens, causal=False))
    assert (batched[1:, :, keep] - alone).abs().max() < 1e-8


def test_more_iterations_converge_and_defaults_stay_finite():
    query, key, value = qkv(q_len=40, seed=6, scale=2.0)
    ctx = context(40, 40, causal=False)
    expected = nystrom(query, key, value, None, None, 8, ctx.scaling)
    errors = [(build(8, iterations)(query, key, value, ctx) - expected).abs().max() for iterations in (2, 6, 40)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-8


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-4), (torch.bfloat16, 1e-1)])
def test_low_precision_follows_float64(dtype, tolerance):
    query, key, value = qkv(q_len=30, seed=7, scale=2.0)
    ctx = context(30, 30, causal=False)
    reference = build(6, iterations=6)(query, key, value, ctx)
    got = build(6, iterations=6)(query.to(dtype), key.to(dtype), value.to(dtype), ctx)
    assert got.dtype == dtype and (got.double() - reference).abs().max() < tolerance


def test_check_layer_errors():
    with pytest.raises(VariantError, match="num_landmarks 64 exceeds the sequence length 37 of test layers"):
        NystromAttention.check_layer(NystromOptions(), layer(Role.BIDIRECTIONAL, sequence_length=37))
    with pytest.raises(VariantError, match="cannot run on causal self-attention"):
        NystromAttention.check_layer(NystromOptions(), layer(Role.CAUSAL))
    with pytest.raises(VariantError, match="`pinv_iterations` must be an integer >= 1, got 0"):
        NystromOptions(pinv_iterations=0).validate()
