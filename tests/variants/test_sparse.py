"""`sparse` against its float64 definition: block layouts, shifted groups, KV-cache rows, errors."""

from __future__ import annotations

import pytest
import torch
from spec import dense_attention
from variant_helpers import causal_padding_visible, context, layer, padding_mask, qkv

from hf_efficient_attn.variants import BlockSparseAttention, Role, SparseOptions, VariantError, block_layout
from hf_efficient_attn.variants.block_layout import BlockSparseLayout


def block_rule(qb: int, kb: int, *, causal: bool, local: int, global_blocks: int, stride: int) -> bool:
    """The block patterns by their papers' definitions, one block pair at a time."""
    if causal and kb > qb:
        return False
    band = 0 <= qb - kb < local if causal else abs(qb - kb) < local
    is_global = kb < global_blocks or (not causal and qb < global_blocks)
    strided = stride > 0 and (qb - kb) % stride == 0
    return band or is_global or strided


def sparse_mask(query_positions, key_positions, padding, *, causal, block_size, **pattern) -> torch.Tensor:
    """Token mask ``[b, 1, q, k]``: blocks counted from each row's first real token, plus causality and padding."""
    batch = 1 if padding is None else padding.shape[0]
    mask = torch.zeros(batch, 1, len(query_positions), len(key_positions), dtype=torch.bool)
    for row in range(batch):
        start = 0 if padding is None else int(padding[row].long().argmax())
        for i, q in enumerate(query_positions.tolist()):
            for j, k in enumerate(key_positions.tolist()):
                if (causal and k > q) or (padding is not None and not padding[row, j]):
                    continue
                qb, kb = max(q - start, 0) // block_size, max(k - start, 0) // block_size
                mask[row, 0, i, j] = block_rule(qb, kb, causal=causal, **pattern)
    return mask


def run(options: SparseOptions, query, key, value, ctx, training: bool = False) -> torch.Tensor:
    variant = BlockSparseAttention(options, layer(heads=query.shape[1], kv_heads=key.shape[1]))
    return variant.train(training)(query, key, value, ctx)


PATTERNS = [
    dict(local=1, global_blocks=0, stride=0),
    dict(local=2, global_blocks=1, stride=0),
    dict(local=1, global_blocks=0, stride=3),
    dict(local=3, global_blocks=2, stride=2),
]


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("side", [None, "left", "right"])
def test_block_pattern_matches_definition(pattern, causal, side):
    query, key, value = qkv(q_len=37, seed=1)
    padding = padding_mask(2, 37, side, [0, 6])
    ctx = context(37, 37, causal=causal, padding=padding)
    options = SparseOptions(
        block_size=4, local_blocks=pattern["local"], global_blocks=pattern["global_blocks"],
        stride_blocks=pattern["stride"],
    )
    expected = dense_attention(
        query, key, value,
        sparse_mask(ctx.query_positions, ctx.key_positions, padding, causal=causal, block_size=4, **pattern),
        ctx.scaling,
    )
    assert (run(options, query, key, value, ctx) - expected).abs().max() < 1e-10


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("side", [None, "left"])
def test_dense_layout_is_exact_attention(causal, side):
    query, key, value = qkv(q_len=30, seed=2)
    padding = padding_mask(2, 30, side, [0, 7])
    ctx = context(30, 30, causal=causal, padding=padding)
    expected = dense_attention(
        query, key, value, causal_padding_visible(ctx.query_positions, ctx.key_positions, causal, padding), ctx.scaling
    )
    options = SparseOptions(block_size=4, local_blocks=8, global_blocks=0)
    assert (run(options, query, key, value, ctx) - expected).abs().max() < 1e-10


def test_kv_cache_queries_match_last_rows_of_full_call():
    """Queries that are the last tokens (a KV cache) see the same pattern, random blocks included."""
    query, key, value = qkv(q_len=45, seed=3)
    options = SparseOptions(block_size=3, local_blocks=2, global_blocks=1, random_blocks=2, stride_blocks=4, seed=7)
    full = run(options, query, key, value, context(45, 45, causal=True))
    for last in (1, 5):
        cached = run(options, query[:, :, -last:], key, value, context(last, 45, causal=True))
        assert (cached - full[:, :, -last:]).abs().max() < 1e-12


def test_random_blocks_are_stable_as_the_sequence_grows():
    layout = BlockSparseLayout(local_blocks=1, global_blocks=1, random_blocks=2, seed=3)
    short = layout.build(8, 8, causal=True)
    long = layout.build(20, 20, causal=True)
    assert torch.equal(long[:8, :8], short)
    assert not long.triu(1).any()
    base = BlockSparseLayout(local_blocks=1, global_blocks=1).build(20, 20, causal=True)
    extra = (long & ~base).sum(-1)
    expected = torch.tensor([min(2, max(0, block - 1)) for block in range(20)])
    assert torch.equal(extra, expected)
    assert not torch.equal(long, BlockSparseLayout(local_blocks=1, global_blocks=1, random_blocks=2, seed=4).build(20, 20, True))


def test_bidirectional_random_blocks_reach_both_sides():
    layout = BlockSparseLayout(local_blocks=1, global_blocks=0, random_blocks=3, seed=1).build(12, 12, causal=False)
    assert layout.sum(-1).eq(4).all()
    assert layout.triu(1).any() and layout.tril(-1).any()


def test_own_layout_per_head_matches_definition():
    """A user's per-head bool layout: head h uses layout[h] at block granularity."""
    query, key, value = qkv(q_len=20, seed=4)
    generator = torch.Generator().manual_seed(0)
    layout = torch.rand(4, 5, 5, generator=generator) < 0.5
    layout |= torch.eye(5, dtype=torch.bool)
    ctx = context(20, 20, causal=False)
    blocks = torch.arange(20) // 4
    mask = layout[:, blocks][:, :, blocks][None]
    expected = dense_attention(query, key, value, mask, ctx.scaling)
    got = run(SparseOptions(block_size=4, layout=layout), query, key, value, ctx)
    assert (got - expected).abs().max() < 1e-10
    assert SparseOptions(layout=layout).to_dict()["layout"] == SparseOptions(layout=layout.tolist()).layout


def test_own_layout_with_empty_rows_gives_zeros():
    query, key, value = qkv(q_len=8, seed=10)
    layout = [[False, False], [True, False]]
    got = run(SparseOptions(block_size=4, layout=layout), query, key, value, context(8, 8, causal=False))
    assert torch.equal(got[:, :, :4], torch.zeros_like(got[:, :, :4])) and got[:, :, 4:].abs().sum() > 0


def test_own_layout_too_small_raises():
    query, key, value = qkv(q_len=20)
    with pytest.raises(VariantError, match="covers 2×2 blocks but this call needs 5 blocks"):
        run(SparseOptions(block_size=4, layout=[[True, False], [True, True]]), query, key, value, context(20, 20, causal=True))


def shifted_mask(length: int, heads: int, group: int, causal: bool) -> torch.Tensor:
    mask = torch.zeros(1, heads, length, length, dtype=torch.bool)
    for h in range(heads):
        shift = group // 2 if h >= heads // 2 else 0
        for q in range(length):
            for k in range(length):
                same = (q + shift) // group == (k + shift) // group
                mask[0, h, q, k] = same and (k <= q or not causal)
    return mask


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_shifted_groups_per_head_in_training(causal):
    query, key, value = qkv(q_len=26, seed=5)
    ctx = context(26, 26, causal=causal)
    expected = dense_attention(query, key, value, shifted_mask(26, 4, 8, causal), ctx.scaling)
    got = run(SparseOptions(pattern="shifted", group_size=8), query, key, value, ctx, training=True)
    assert (got - expected).abs().max() < 1e-10


def test_shifted_runs_exact_attention_in_eval():
    query, key, value = qkv(q_len=26, seed=6)
    ctx = context(26, 26, causal=True)
    expected = dense_attention(
        query, key, value, causal_padding_visible(ctx.query_positions, ctx.key_positions, True, None), ctx.scaling
    )
    got = run(SparseOptions(pattern="shifted", group_size=8), query, key, value, ctx, training=False)
    assert (got - expected).abs().max() < 1e-10


def test_a_model_patched_in_eval_mode_runs_shifted_groups_as_exact_attention():
    """The variant takes its attention module's mode when it is attached: no `model.eval()` needed after."""
    from tiny_models import tiny_llama

    from hf_efficient_attn import patch_model

    base = tiny_llama()
    ids = torch.randint(3, 97, (1, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = base(ids).logits
        got = patch_model(tiny_llama(), "sparse", pattern="shifted", group_size=4)(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_candidate_ranges_follow_the_layout():
    """A chunk of queries gathers only its active key blocks, never the whole sequence."""
    variant = BlockSparseAttention(SparseOptions(block_size=16, local_blocks=2, global_blocks=1), layer())
    ctx = context(1024, 1024, causal=True)
    ranges = variant.candidate_ranges(ctx, 512, 639)
    assert ranges == [(0, 16), (31 * 16, 40 * 16)]  # the global block, then blocks 31..39


def test_dropout_applies_to_probabilities():
    query, key, value = qkv(q_len=16, seed=7)
    options = SparseOptions(block_size=4, local_blocks=2)
    plain = run(options, query, key, value, context(16, 16, causal=True))
    dropped = run(options, query, key, value, context(16, 16, causal=True, dropout=0.5), training=True)
    assert torch.isfinite(dropped).all() and (dropped - plain).abs().max() > 1e-3


def test_rows_without_visible_keys_are_zero():
    query, key, value = qkv(q_len=16, seed=8)
    padding = padding_mask(2, 16, "left", [0, 5])
    got = run(SparseOptions(block_size=4), query, key, value, context(16, 16, causal=True, padding=padding))
    assert torch.equal(got[1, :, :5], torch.zeros_like(got[1, :, :5]))
    assert torch.isfinite(got).all()


def test_low_precision_matches_float64():
    query, key, value = qkv(q_len=40, seed=9)
    options = SparseOptions(block_size=8, local_blocks=2, stride_blocks=2)
    ctx = context(40, 40, causal=True)
    reference = run(options, query, key, value, ctx)
    for dtype, tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2), (torch.float16, 5e-3)):
        got = run(options, query.to(dtype), key.to(dtype), value.to(dtype), ctx)
        assert got.dtype == dtype
        assert (got.double() - reference).abs().max() < tolerance


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pattern": "dense"}, "`pattern` must be 'block' or 'shifted', got 'dense'"),
        ({"block_size": 0}, "`block_size` must be an integer >= 1, got 0"),
        ({"local_blocks": -1}, "`local_blocks` must be an integer >= 0, got -1"),
        ({"random_blocks": 1.5}, "`random_blocks` must be an integer >= 0"),
        ({"group_size": 7}, "`group_size` must be even"),
        ({"group_size": 0}, "`group_size` must be an integer >= 2, got 0"),
        ({"local_blocks": 0, "global_blocks": 0}, "queries would see no key; set local_blocks >= 1"),
        ({"layout": [True, False]}, "`layout` must be a non-empty bool"),
        ({"layout": [[True], [True, False]]}, "`layout` must be a rectangular bool tensor"),
    ],
)
def test_bad_options_raise(options, message):
    with pytest.raises(VariantError) as raised:
        SparseOptions(**options).validate()
    assert message in str(raised.value)


def test_per_head_layout_must_match_heads():
    options = SparseOptions(layout=torch.ones(3, 2, 2, dtype=torch.bool))
    with pytest.raises(VariantError, match="has 3 heads but test layer 0 has 4"):
        BlockSparseAttention.check_layer(options, layer(Role.CAUSAL, heads=4))


@pytest.mark.parametrize("pattern", ["local", "shifted"])
def test_kernel_layouts_are_built_once_and_outside_inference_mode(pattern):
    """The fused kernels keep tile lists per layout tensor, never for inference tensors: the variant names
    its layout, and every call of a size (under torch.inference_mode too) gets the same normal tensor."""
    options = SparseOptions(block_size=4, local_blocks=2, random_blocks=1) if pattern == "local" else \
        SparseOptions(pattern="shifted", group_size=8)
    variant = BlockSparseAttention(options, layer(heads=4, kv_heads=2))
    variant.train(pattern == "shifted")  # the shifted pattern has a layout only in training
    with torch.inference_mode():
        mask = variant.kernel_mask(context(24, 24, causal=True))
        first = block_layout.layout_for(mask.block_layout, mask.layout_blocks, True, torch.device("cpu"))
        mask = variant.kernel_mask(context(24, 24, causal=True))
        again = block_layout.layout_for(mask.block_layout, mask.layout_blocks, True, torch.device("cpu"))
    assert first is again and not first.is_inference()
    assert mask.layout_blocks == 6 and first.shape[-1] >= 6
    larger = variant.kernel_mask(context(400, 400, causal=True))
    assert block_layout.layout_for(larger.block_layout, larger.layout_blocks, True, torch.device("cpu")) is not first


def test_layouts_are_named_by_their_options():
    """Variants with the same options share one layout name; other options get another."""
    one = BlockSparseAttention(SparseOptions(block_size=4, random_blocks=1, seed=3), layer())
    two = BlockSparseAttention(SparseOptions(block_size=4, random_blocks=1, seed=3), layer())
    other = BlockSparseAttention(SparseOptions(block_size=4, random_blocks=1, seed=4), layer())
    assert one.layout_name == two.layout_name != other.layout_name
    assert not torch.equal(
        block_layout.layout_for(one.layout_name, 32, True), block_layout.layout_for(other.layout_name, 32, True)
    )
