"""`lsh` against its float64 definition: hashing, sorting, chunking, recent keys, sink tokens, the combination
of rounds, exactness with one bucket and one chunk, padding, causality, options."""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch
from spec import (
    counted_attention,
    dense_attention,
    first_real_tokens,
    lsh_buckets,
    lsh_chunk_pairs,
    lsh_recent_pairs,
)
from variant_helpers import causal_padding_visible, context, layer, padding_mask, qkv

from hf_efficient_attn import patch_model
from hf_efficient_attn.variants import LSHAttention, LSHOptions, Role, VariantError
from hf_efficient_attn.variants.base import ExactPatternWarning, LayerInfo
from hf_efficient_attn.variants.lsh import CAUSAL_SINK_TOKENS, _combine_rounds
from hf_efficient_attn.variants.lsh_buckets import (
    chunk_windows,
    derived_bucket_count,
    hash_buckets,
    recent_key_mask,
)


def build(causal: bool, heads: int = 4, kv_heads: int = 2, **options) -> LSHAttention:
    role = Role.CAUSAL if causal else Role.BIDIRECTIONAL
    return LSHAttention(LSHOptions(**options), layer(role, heads=heads, kv_heads=kv_heads))


def lsh_definition(variant: LSHAttention, query, key, value, ctx, padding) -> torch.Tensor:
    """The whole variant from the definitions in `spec`: each round's pairs (its chunk or recent keys and
    the row's first ``sink_tokens`` real tokens) counted, the own key ``num_hashes`` times, softmax over the
    counts."""
    batch, q_heads, q_len, _ = query.shape
    k_len, groups = key.shape[-2], q_heads // key.shape[1]
    rounds, size = variant.options.num_hashes, variant.options.bucket_size
    num_buckets = variant.num_buckets(k_len)
    query_buckets = lsh_buckets(query, variant.rotations, num_buckets)
    key_buckets = lsh_buckets(key, variant.rotations, num_buckets)
    counts = torch.zeros(batch, q_heads, q_len, k_len)
    positions = ctx.query_positions.tolist()
    for row in range(batch):
        real = [True] * k_len if padding is None else padding[row].tolist()
        sinks = first_real_tokens(real, variant.sink_tokens)
        for head in range(q_heads):
            for r in range(rounds):
                queries, keys = query_buckets[row, head, r].tolist(), key_buckets[row, head // groups, r].tolist()
                if q_len == k_len:
                    pairs = lsh_chunk_pairs(queries, keys, real, size, ctx.causal, sinks)
                else:
                    pairs = lsh_recent_pairs(queries, keys, positions, real, size, sinks)
                for i, j in pairs:
                    counts[row, head, i, j] += j != positions[i]
        for i, position in enumerate(positions):
            counts[row, :, i, position] += rounds * real[position]
    return counted_attention(query, key, value, counts, ctx.scaling)


# --------------------------------------------------------------------------------------------------
# hashing, sorting, chunking
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_buckets", [1, 2, 6])
def test_buckets_follow_the_angular_hash(num_buckets):
    x = torch.randn(2, 3, 10, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rotations = torch.randn(3, 8, 4, generator=torch.Generator().manual_seed(1))
    buckets = hash_buckets(x, rotations, num_buckets)
    assert torch.equal(buckets, lsh_buckets(x, rotations, num_buckets))
    assert torch.equal(hash_buckets(2.5 * x, rotations, num_buckets), buckets)  # only the direction counts
    if num_buckets > 1:  # the negated vector lands half way round
        assert torch.equal(hash_buckets(-x, rotations, num_buckets), (buckets + num_buckets // 2) % num_buckets)


def test_derived_bucket_count_keeps_about_a_bucket_size_per_bucket():
    assert [derived_bucket_count(n, 64) for n in (10, 64, 191, 192, 1024, 1500)] == [2, 2, 2, 4, 16, 24]


def random_buckets(shape, num_buckets: int, seed: int, padding: torch.Tensor | None = None) -> torch.Tensor:
    buckets = torch.randint(0, num_buckets, shape, generator=torch.Generator().manual_seed(seed))
    return buckets if padding is None else buckets.masked_fill(~padding, num_buckets)


def window_pairs(windows, row: int, causal: bool) -> set[tuple[int, int]]:
    """The (query, key) pairs `ChunkWindows` gives one row of its leading dimension."""
    size = windows.key_at_window.shape[-1] // 2
    pairs = set()
    for chunk in range(windows.chunks):
        for place in range(size):
            i = int(windows.query_at_slot[row, chunk * size + place])
            if i < 0:
                continue
            for w in range(2 * size):
                j = int(windows.key_at_window[row, chunk, w])
                if windows.window_valid[row, chunk, w] and not (causal and j > i):
                    pairs.add((i, j))
    return pairs


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("length", "num_buckets", "size"), [(23, 4, 3), (40, 2, 5), (9, 6, 4), (16, 1, 16), (30, 8, 1)])
@pytest.mark.parametrize("side", [None, "left", "right"])
def test_chunks_give_the_defined_pairs(causal, length, num_buckets, size, side):
    padding = padding_mask(3, length, side, [0, 5, length - 2])
    queries = random_buckets((3, length), num_buckets, seed=length, padding=padding)
    keys = random_buckets((3, length), num_buckets, seed=length + 1, padding=padding)
    windows = chunk_windows(queries, keys, num_buckets, size)
    for row in range(3):
        real = [True] * length if padding is None else padding[row].tolist()
        expected = lsh_chunk_pairs(queries[row].tolist(), keys[row].tolist(), real, size, causal)
        assert window_pairs(windows, row, causal) == expected


def test_queries_are_sorted_by_bucket_then_position_and_each_bucket_starts_a_chunk():
    size, num_buckets = 3, 4
    queries = random_buckets((1, 29), num_buckets, seed=7)
    windows = chunk_windows(queries, queries, num_buckets, size)
    slots = windows.query_at_slot[0].tolist()
    filled = [(slot, i) for slot, i in enumerate(slots) if i >= 0]
    order = [i for _, i in filled]
    assert sorted(order) == list(range(29))
    assert order == sorted(order, key=lambda i: (int(queries[0, i]), i))
    for bucket in range(num_buckets):
        members = [slot for slot, i in filled if queries[0, i] == bucket]
        assert members[0] % size == 0 and members == list(range(members[0], members[0] + len(members)))
    assert all(slots[int(windows.slot_of_query[0, i])] == i for i in range(29))


def test_chunks_see_keys_by_position_within_their_bucket():
    """One bucket, chunks of 2 over 8 tokens: chunk [4, 5] sees keys 3..6 (the 2 at or before its first
    query, the 2 after), chunk [0, 1] keys 0..2."""
    queries = torch.zeros(1, 8, dtype=torch.long)
    windows = chunk_windows(queries, queries, 1, 2)
    pairs = window_pairs(windows, 0, causal=False)
    assert {j for i, j in pairs if i == 4} == {3, 4, 5, 6}
    assert {j for i, j in pairs if i == 0} == {0, 1, 2}


@pytest.mark.parametrize("size", [1, 3, 50])
def test_recent_keys_are_the_last_of_the_bucket(size):
    queries = random_buckets((2, 5), 3, seed=1)
    keys = random_buckets((2, 30), 3, seed=2)
    positions = [25, 26, 27, 28, 29]
    real = padding_mask(2, 30, "left", [0, 9])
    causal = torch.arange(30)[None, :] <= torch.tensor(positions)[:, None]
    allowed = recent_key_mask(queries, keys, causal[None] & real[:, None, :], size)
    for row in range(2):
        expected = lsh_recent_pairs(queries[row].tolist(), keys[row].tolist(), positions, real[row].tolist(), size)
        assert set(map(tuple, allowed[row].nonzero().tolist())) == expected


def test_rounds_combine_as_one_softmax_over_what_they_found():
    """Two rounds' normalised outputs and log-sum-exps, and an own key: the combination is the softmax over
    every key found, weighted by how many rounds found it."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(5, generator=generator, dtype=torch.float64)
    values = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    found = [torch.tensor([1, 1, 0, 1, 0], dtype=torch.bool), torch.tensor([0, 1, 1, 0, 0], dtype=torch.bool)]
    outputs, lses = [], []
    for keys in found:
        weights = torch.softmax(scores.masked_fill(~keys, float("-inf")), 0)
        outputs.append(weights @ values)
        lses.append(torch.logsumexp(scores[keys], 0))
    own = (scores[4].view(1, 1, 1, 1), values[4].view(1, 1, 1, 1, 3), torch.ones(1, 1, 1, 1, dtype=torch.bool))
    combined = _combine_rounds(torch.stack(outputs).view(1, 1, 1, 2, 1, 3), torch.stack(lses).view(1, 1, 1, 2, 1),
                               torch.zeros(1, 1, 1, 2, 1, dtype=torch.bool), own, rounds=2)
    counts = found[0].double() + found[1].double() + torch.tensor([0, 0, 0, 0, 2.0])
    weights = counts * scores.exp()
    assert (combined.view(3) - weights @ values / weights.sum()).abs().max() < 1e-14


# --------------------------------------------------------------------------------------------------
# the variant against its definition
# --------------------------------------------------------------------------------------------------


CASES = [
    pytest.param(dict(num_hashes=2, bucket_size=3, num_buckets=4), 2, id="4-buckets-chunks-of-3"),
    pytest.param(dict(num_hashes=3, bucket_size=5, num_buckets=2), 1, id="2-buckets-mqa"),
    pytest.param(dict(num_hashes=1, bucket_size=2, num_buckets=8), 4, id="8-buckets-one-round"),
    pytest.param(dict(num_hashes=2, bucket_size=4), 2, id="derived-buckets"),
]


@pytest.mark.parametrize(("options", "kv_heads"), CASES)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("side", [None, "left", "right"])
@pytest.mark.parametrize("sinks", [0, 3], ids=["no-sinks", "3-sinks"])
def test_matches_definition(options, kv_heads, causal, side, sinks):
    query, key, value = qkv(q_len=21, kv_heads=kv_heads, seed=3, scale=2.0)
    padding = padding_mask(2, 21, side, [0, 6])
    ctx = context(21, 21, causal=causal, padding=padding)
    variant = build(causal, kv_heads=kv_heads, sink_tokens=sinks, **options)
    expected = lsh_definition(variant, query, key, value, ctx, padding)
    assert (variant(query, key, value, ctx) - expected).abs().max() < 1e-12


@pytest.mark.parametrize("causal", [True, False])
def test_sinks_are_seen_once_per_round_beside_the_chunk(causal):
    """One bucket, so every round gives the same pairs: in chunks of 4 over 24 tokens, chunk ``c`` (queries
    ``4c .. 4c+3``) sees keys ``4c - 3 .. 4c + 4``, and every query sees the 2 sinks. Each key counts once
    per round, so the output is softmax attention over that union (a sink counted again where the window
    also holds it would weigh double)."""
    length, size, sinks = 24, 4, 2
    query, key, value = qkv(q_len=length, seed=14, scale=2.0)
    ctx = context(length, length, causal=causal)
    visible = torch.zeros(1, 1, length, length, dtype=torch.bool)
    for i in range(length):
        first = i // size * size
        for j in range(length):
            visible[0, 0, i, j] = (first - size < j <= first + size or j < sinks) and not (causal and j > i)
    expected = dense_attention(query, key, value, visible, ctx.scaling)
    variant = build(causal, num_hashes=3, bucket_size=size, num_buckets=1, sink_tokens=sinks)
    assert (variant(query, key, value, ctx) - expected).abs().max() < 1e-12
    without = build(causal, num_hashes=3, bucket_size=size, num_buckets=1, sink_tokens=0)(query, key, value, ctx)
    assert (without - expected)[:, :, 2 * size :].abs().max() > 1e-2  # the control: from chunk 2 on, only sinks reach 0, 1


def test_sinks_default_to_causal_layers_only():
    assert build(True).sink_tokens == CAUSAL_SINK_TOKENS > 0 and build(False).sink_tokens == 0
    assert build(True, sink_tokens=0).sink_tokens == 0 and build(False, sink_tokens=1).sink_tokens == 1


@pytest.mark.parametrize("side", [None, "left"])
@pytest.mark.parametrize("queries", [1, 3])
@pytest.mark.parametrize("sinks", [0, 3], ids=["no-sinks", "3-sinks"])
def test_calls_over_a_cache_match_the_recent_key_definition(side, queries, sinks):
    """Over a KV cache the sinks are the cache's first real tokens (after a row's left padding)."""
    query, key, value = qkv(q_len=queries, k_len=26, seed=4, scale=2.0)
    padding = padding_mask(2, 26, side, [0, 7])
    ctx = context(queries, 26, causal=True, padding=padding)
    variant = build(True, num_hashes=3, bucket_size=3, num_buckets=4, sink_tokens=sinks)
    expected = lsh_definition(variant, query, key, value, ctx, padding)
    assert (variant(query, key, value, ctx) - expected).abs().max() < 1e-12


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("side", [None, "left", "right"])
@pytest.mark.parametrize("sinks", [0, 3], ids=["no-sinks", "3-sinks"])
def test_one_bucket_and_one_chunk_is_exact_attention(causal, side, sinks):
    """Every key is in the one chunk's window, so sinks add nothing (they are not counted twice)."""
    query, key, value = qkv(q_len=20, seed=5, scale=2.0)
    padding = padding_mask(2, 20, side, [0, 5])
    ctx = context(20, 20, causal=causal, padding=padding)
    variant = build(causal, num_hashes=3, bucket_size=20, num_buckets=1, sink_tokens=sinks)
    expected = dense_attention(query, key, value, causal_padding_visible(ctx.query_positions, ctx.key_positions,
                                                                         causal, padding), ctx.scaling)
    real = torch.ones(2, 20, dtype=torch.bool) if padding is None else padding
    got = variant(query, key, value, ctx)
    assert (got - expected).abs().amax(dim=(1, 3))[real].max() < 1e-12
    assert (got.abs().amax(dim=(1, 3))[~real] == 0).all()  # padding positions' own outputs are zeros
    smaller = build(causal, num_hashes=3, bucket_size=5, num_buckets=1, sink_tokens=sinks)(query, key, value, ctx)
    assert (smaller - expected).abs().amax(dim=(1, 3))[real].max() > 1e-2  # the control: chunks do cut


@pytest.mark.parametrize("sinks", [0, 3], ids=["no-sinks", "3-sinks"])
def test_decoding_equals_the_prompt_when_it_fits_one_chunk(sinks):
    """Within one chunk a prompt's rows are what queries over a cache see: the last row of a causal call
    equals a one-query call over the same keys."""
    query, key, value = qkv(q_len=12, seed=6, scale=2.0)
    variant = build(True, num_hashes=3, bucket_size=12, num_buckets=4, sink_tokens=sinks)
    whole = variant(query, key, value, context(12, 12, causal=True))
    step = variant(query[:, :, -1:], key, value, context(1, 12, causal=True))
    assert (whole[:, :, -1:] - step).abs().max() < 1e-12


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("sinks", [0, 3], ids=["no-sinks", "3-sinks"])
def test_padding_does_not_change_real_rows(side, sinks):
    """Sinks included: a left-padded row's sinks are its first real tokens, as alone."""
    query, key, value = qkv(batch=2, q_len=24, seed=7, scale=2.0)
    padding = padding_mask(2, 24, side, [0, 9])
    variant = build(True, num_hashes=2, bucket_size=3, num_buckets=4, sink_tokens=sinks)
    batched = variant(query, key, value, context(24, 24, causal=True, padding=padding))
    keep = padding[1]
    alone = variant(query[1:, :, keep], key[1:, :, keep], value[1:, :, keep], context(15, 15, causal=True))
    assert (batched[1:, :, keep] - alone).abs().max() < 1e-12


@pytest.mark.parametrize("sinks", [0, 3, 20], ids=["no-sinks", "3-sinks", "20-sinks"])
def test_later_tokens_never_change_earlier_outputs(sinks):
    """Causal-safe: what a query sees is decided by tokens at or before it, so changing every token after
    position 15 (their buckets included, and sinks among them) leaves rows 0..15 as they were."""
    variant = build(True, num_hashes=3, bucket_size=2, num_buckets=4, sink_tokens=sinks)
    query, key, value = qkv(batch=1, q_len=40, seed=8, scale=2.0)
    later_query, later_key, later_value = qkv(batch=1, q_len=40, seed=9, scale=2.0)
    changed = [torch.cat([a[:, :, :16], b[:, :, 16:]], dim=2) for a, b in
               ((query, later_query), (key, later_key), (value, later_value))]
    ctx = context(40, 40, causal=True)
    before, after = variant(query, key, value, ctx), variant(*changed, ctx)
    assert (before[:, :, :16] - after[:, :, :16]).abs().max() == 0
    assert (before[:, :, 16:] - after[:, :, 16:]).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("sinks", [0, 3], ids=["no-sinks", "3-sinks"])
def test_gradients_match_the_definition(causal, sinks):
    query, key, value = (x.requires_grad_() for x in qkv(q_len=17, seed=10, scale=2.0))
    padding = padding_mask(2, 17, "right", [0, 4])
    ctx = context(17, 17, causal=causal, padding=padding)
    variant = build(causal, num_hashes=2, bucket_size=3, num_buckets=4, sink_tokens=sinks)
    weight = torch.randn(2, 4, 17, 8, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    got = torch.autograd.grad((variant(query, key, value, ctx) * weight).sum(), (query, key, value))
    expected = torch.autograd.grad((lsh_definition(variant, query, key, value, ctx, padding) * weight).sum(),
                                   (query, key, value))
    for mine, theirs in zip(got, expected, strict=True):
        assert torch.isfinite(mine).all() and (mine - theirs).abs().max() < 1e-10


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
def test_low_precision_follows_float64(dtype, tolerance):
    query, key, value = (x.to(dtype) for x in qkv(q_len=21, seed=12, scale=2.0))
    ctx = context(21, 21, causal=True)
    variant = build(True, num_hashes=2, bucket_size=3, num_buckets=4)
    reference = variant(query.double(), key.double(), value.double(), ctx)
    got = variant(query, key, value, ctx)
    assert got.dtype == dtype and (got.double() - reference).abs().max() < tolerance


def test_layers_draw_their_own_rotations_from_the_seed():
    def rotations(seed: int, index: int) -> torch.Tensor:
        info = LayerInfo(Role.CAUSAL, "decoder", index, 4, 2, 8, max_length=256)
        return LSHAttention(LSHOptions(num_buckets=4, seed=seed), info).rotations

    assert torch.equal(rotations(0, 1), rotations(0, 1))
    assert not torch.equal(rotations(0, 1), rotations(0, 2)) and not torch.equal(rotations(0, 1), rotations(1, 1))
    assert rotations(0, 1).shape == (4, 8, 2) and rotations(0, 1).dtype == torch.float32


# --------------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_hashes": 0}, "`num_hashes` must be an integer >= 1 (each round is one hashing of the tokens; "
                            "1 to 8 are usual), got 0; use num_hashes=4."),
        ({"bucket_size": 0}, "`bucket_size` must be an integer >= 1, got 0"),
        ({"num_buckets": 5}, "`num_buckets` must be 1 or even (a rotation and its negation make buckets in pairs), "
                             "got 5; use 6, or None to derive it from the length."),
        ({"num_buckets": 0}, "`num_buckets` must be an integer >= 1, got 0"),
        ({"sink_tokens": -1}, "`sink_tokens` must be an integer >= 0, got -1"),
    ],
)
def test_options_that_can_never_work_are_refused(options, message):
    with pytest.raises(VariantError) as raised:
        LSHOptions(**options).validate()
    assert message in str(raised.value)


def test_a_bucket_larger_than_the_layer_is_refused_with_the_fix():
    vit_layer = LayerInfo(Role.BIDIRECTIONAL, "encoder", 0, 4, 4, 8, sequence_length=37, grid=(6, 6), prefix_tokens=1)
    with pytest.raises(VariantError, match="bucket_size=64 is larger than the 37 tokens of this model's encoder "
                                           r"layers, so one chunk would hold every token; use a bucket_size of at most 37, "
                                           r"and well below it for the buckets to leave keys out \(e.g. 4\)"):
        LSHAttention.check_layer(LSHOptions(), vit_layer)
    decoder_layer = LayerInfo(Role.CAUSAL, "decoder", 0, 4, 2, 8, max_length=32)
    with pytest.raises(VariantError, match="larger than the 32 positions"):
        LSHAttention.check_layer(LSHOptions(bucket_size=33), decoder_layer)
    with pytest.warns(ExactPatternWarning, match="bucket_size=37 with num_buckets=1 puts in one chunk all 37 tokens"):
        LSHAttention.check_layer(LSHOptions(bucket_size=37, num_buckets=1), vit_layer)
    with pytest.raises(VariantError, match="Variant 'lsh' cannot run on cross-attention"):
        LSHAttention.check_layer(LSHOptions(bucket_size=4), LayerInfo(Role.CROSS, "cross", 0, 4, 4, 8))
    with pytest.warns(ExactPatternWarning, match="sink_tokens=37 makes sinks of all 37 tokens"):
        LSHAttention.check_layer(LSHOptions(bucket_size=4, sink_tokens=37), vit_layer)


def test_a_caller_mask_is_refused():
    query, key, value = qkv(q_len=6, seed=13)
    ctx = context(6, 6, causal=False)
    ctx = type(ctx)(**{**{f: getattr(ctx, f) for f in ctx.__dataclass_fields__ if f != "routes"},
                       "dense_mask": torch.ones(1, 1, 6, 6, dtype=torch.bool)})
    with pytest.raises(VariantError, match="'lsh' cannot apply a 4-D attention mask; pass a 2-D padding mask"):
        build(False, num_buckets=2, bucket_size=2)(query, key, value, ctx)


# --------------------------------------------------------------------------------------------------
# whole models
# --------------------------------------------------------------------------------------------------


def outputs_and_grads(model, inputs):
    model.zero_grad()
    logits = model(**inputs).logits
    logits.float().sin().mean().backward()
    return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("model_name", ["llama", "vit", "whisper"])
def test_one_bucket_and_one_chunk_match_the_unpatched_model(request, model_name):
    model = request.getfixturevalue(model_name)
    if model_name == "llama":
        inputs = {"input_ids": torch.randint(3, 97, (2, 20), generator=torch.Generator().manual_seed(0))}
        size = 20
    else:
        inputs = request.getfixturevalue(f"{model_name}_inputs")
        size = 24 if model_name == "whisper" else 37
    baseline = outputs_and_grads(model, inputs)
    with pytest.warns(ExactPatternWarning) if model_name != "llama" else nullcontext():
        patched = patch_model(copy.deepcopy(model), "lsh", bucket_size=size, num_buckets=1, num_hashes=2)
    logits, grads = outputs_and_grads(patched, inputs)
    assert (logits - baseline[0]).abs().max() < 1e-5
    assert grads.keys() == baseline[1].keys()
    assert max((grads[n] - baseline[1][n]).abs().max().item() for n in grads) < 1e-5
    narrow = patch_model(copy.deepcopy(model), "lsh", bucket_size=4, num_hashes=2)
    assert (narrow(**inputs).logits - baseline[0]).abs().max() > 1e-3  # the control: buckets do cut


@pytest.mark.parametrize("sinks", [0, 2], ids=["no-sinks", "2-sinks"])
def test_cached_generation_equals_recomputation_within_one_chunk(llama, sinks):
    """Growing and static caches, a left-padded row among them (its sinks after its padding): the steps over
    the cache see what the prompt's rows see while everything fits one chunk."""
    model = patch_model(llama, "lsh", bucket_size=32, num_buckets=4, sink_tokens=sinks)
    ids = torch.randint(3, 97, (2, 8), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    recomputed = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, use_cache=False)
    for cache in ("dynamic", "static"):
        cached = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, cache_implementation=cache)
        assert torch.equal(cached, recomputed), cache
