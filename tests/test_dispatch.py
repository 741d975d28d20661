"""The dispatch rule on the CPU: which route each call takes, and that every route gives the definition.

On the CPU the rule has two routes: torch's SDPA for calls the variant's pattern covers entirely, the
chunked engine for the rest (`tests/kernels/test_dispatch_kernels.py` adds the Triton route). Calls are
built as a model builds them (`build_context` over a `make_layout` layout); outputs are compared with
the float64 definitions of `spec`.
"""

from __future__ import annotations

import pytest
import torch
from spec import dense_attention, sliding_mask

from hf_efficient_attn import dispatch, fused_path, layout_routes, sdpa_calls
from hf_efficient_attn.context import build_context, drop_future_keys
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
from hf_efficient_attn.variants import block_layout as layouts

SCALE = 0.3


def layer(role: Role = Role.CAUSAL) -> LayerInfo:
    return LayerInfo(role, "test", 0, 4, 2, 8)


def qkv(q_len: int, k_len: int, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shapes = ((batch, 4, q_len, 8), (batch, 2, k_len, 8), (batch, 2, k_len, 8))
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]


def call(variant, query, key, value, *, causal=True, tokens=None, padding=None, static_start=None,
         queries_first=False):
    """The variant's route and output for one call, with the layout a model would build."""
    mask = None
    if tokens is not None or padding is not None or static_start is not None:
        mask = make_layout(
            tokens=tokens if tokens is not None else key.shape[-2],
            padding=padding,
            query_start=None if static_start is None else torch.tensor(static_start),
            query_length=query.shape[-2],
            queries_first=queries_first,
        )
    context = build_context(query=query, key=key, attention_mask=mask, causal=causal, scaling=SCALE, dropout=0.0,
                            cache_window=variant.cache_window(), position_ids=None, native_window=None)
    context = drop_future_keys(context, key.shape[-2])
    keys_seen = context.key_positions.shape[0]
    key, value = key[..., :keys_seen, :], value[..., :keys_seen, :]
    routes = []
    choose = dispatch.choose

    def noted(*args, **kwargs):
        result = choose(*args, **kwargs)
        routes.append(result[0])
        return result

    dispatch.choose = noted
    try:
        output = variant(query, key, value, context)
    finally:
        dispatch.choose = choose
    return routes[-1], output, context


def sliding(window: int, sinks: int = 0, role: Role = Role.CAUSAL) -> SlidingWindowAttention:
    return SlidingWindowAttention(SlidingOptions(window=window, sink_tokens=sinks), layer(role))


CASES = {
    # name: (variant factory, q_len, k_len, extra call arguments, expected route)
    "exact-causal": (lambda: FlashAttention(FlashOptions(), layer()), 12, 12, {}, "sdpa"),
    "exact-bidirectional": (lambda: FlashAttention(FlashOptions(), layer(Role.BIDIRECTIONAL)), 12, 12,
                            {"causal": False}, "sdpa"),
    "window-covers": (lambda: sliding(12), 12, 12, {}, "sdpa"),
    "window-narrower": (lambda: sliding(5), 12, 12, {}, "chunked"),
    "window-bidirectional-covers": (lambda: sliding(12, role=Role.BIDIRECTIONAL), 12, 12, {"causal": False}, "sdpa"),
    "decode-over-bounded-cache": (lambda: sliding(5, sinks=2), 1, 7, {"tokens": 30}, "sdpa"),
    "chunk-over-bounded-cache": (lambda: sliding(5, sinks=2), 3, 9, {"tokens": 30}, "chunked"),
    "decode-growing-cache": (lambda: FlashAttention(FlashOptions(), layer()), 1, 20, {}, "sdpa"),
    "prompt-in-fresh-static-cache": (lambda: FlashAttention(FlashOptions(), layer()), 6, 16, {"tokens": 16, "queries_first": True},
                                     "sdpa"),
    "static-decode": (lambda: FlashAttention(FlashOptions(), layer()), 1, 16, {"static_start": 9}, "sdpa"),
    "static-chunk": (lambda: FlashAttention(FlashOptions(), layer()), 3, 16, {"static_start": 9}, "sdpa"),
    "static-decode-padded": (lambda: FlashAttention(FlashOptions(), layer()), 1, 16,
                             {"static_start": 9, "padding": torch.tensor([[True] * 16, [False] * 3 + [True] * 13])},
                             "sdpa"),
    "static-decode-over-bounded-layer": (lambda: sliding(5, sinks=2), 1, 7, {"static_start": 20}, "sdpa"),
    "static-window-narrower": (lambda: sliding(5), 1, 16, {"static_start": 9}, "chunked"),
    "blocks-cover": (lambda: BlockSparseAttention(SparseOptions(block_size=8, local_blocks=2), layer()), 12, 12, {},
                     "sdpa"),
    "blocks-sparse": (lambda: BlockSparseAttention(SparseOptions(block_size=4, local_blocks=1, global_blocks=0),
                                                   layer()), 12, 12, {}, "chunked"),
    "backend-reference": (lambda: FlashAttention(FlashOptions(backend="reference"), layer()), 12, 12, {}, "chunked"),
}


def definition(variant, query, key, value, context) -> torch.Tensor:
    """The float64 definition of the call: causality, padding, and the variant's own pattern."""
    visible = torch.ones(1, 1, query.shape[-2], key.shape[-2], dtype=torch.bool)
    if context.causal:
        visible = (context.key_positions[None, :] <= context.query_positions[:, None])[None, None]
    if isinstance(variant, SlidingWindowAttention):
        starts = None if context.sequence_start is None else context.sequence_start.tolist()
        visible = visible & sliding_mask(context.query_positions, context.key_positions,
                                         window=variant.options.window, causal=context.causal,
                                         sinks=variant.options.sink_tokens, starts=starts)
    elif isinstance(variant, BlockSparseAttention):
        visible = visible & variant.allowed(context, context.query_positions, context.key_positions)
    if context.key_padding is not None:
        visible = visible & context.key_padding[:, None, None, :]
    return dense_attention(query, key, value, visible, SCALE)


@pytest.mark.parametrize("name", sorted(CASES))
def test_route_and_result(name):
    make, q_len, k_len, extra, expected_route = CASES[name]
    variant = make()
    query, key, value = qkv(q_len, k_len)
    route, output, context = call(variant, query, key, value, **extra)
    assert route == expected_route
    if context.key_positions.shape[0] != key.shape[-2]:  # future slots of a static cache were dropped
        key, value = key[..., : context.key_positions.shape[0], :], value[..., : context.key_positions.shape[0], :]
    torch.testing.assert_close(output, definition(variant, query, key, value, context), rtol=0, atol=1e-12)


def test_padding_goes_to_sdpa_as_a_key_mask_with_zero_rows():
    """Padding on an exact call: SDPA with the padding as its mask; rows that see nothing are zeros."""
    variant = FlashAttention(FlashOptions(), layer())
    query, key, value = qkv(10, 10)
    padding = torch.ones(2, 10, dtype=torch.bool)
    padding[1, :4] = False
    route, output, context = call(variant, query, key, value, padding=padding)
    assert route == "sdpa"
    torch.testing.assert_close(output, definition(variant, query, key, value, context), rtol=0, atol=1e-12)
    assert torch.equal(output[1, :, :4], torch.zeros_like(output[1, :, :4]))


def test_every_route_gives_the_same_result():
    """The same exact call on SDPA and on the chunked engine."""
    query, key, value = qkv(14, 14)
    padding = torch.ones(2, 14, dtype=torch.bool)
    padding[0, 11:] = False
    outputs = {}
    for backend in ("auto", "reference"):
        variant = FlashAttention(FlashOptions(backend=backend), layer())
        outputs[call(variant, query, key, value, padding=padding)[0]] = call(variant, query, key, value,
                                                                             padding=padding)[1]
    assert outputs.keys() == {"sdpa", "chunked"}
    torch.testing.assert_close(outputs["sdpa"], outputs["chunked"], rtol=0, atol=1e-12)


def test_where_kernels_run_dense_patterns_stay_on_the_kernels(monkeypatch):
    """Where the kernels run (CUDA), they beat one masked SDPA call for every pattern measured, so a short
    bidirectional call under a wide window or a nearly dense block layout never takes the masked route."""
    monkeypatch.setattr(fused_path, "kernels_preferred", lambda device: True)
    query, key, value = qkv(48, 48)
    context = build_context(query=query, key=key, attention_mask=None, causal=False, scaling=SCALE, dropout=0.0,
                            cache_window=None, position_ids=None, native_window=None)
    wide = sliding(30, role=Role.BIDIRECTIONAL)
    dense_layout = BlockSparseAttention(SparseOptions(block_size=8, local_blocks=3, global_blocks=1),
                                        layer(Role.BIDIRECTIONAL))
    for variant in (wide, dense_layout):
        assert not layout_routes.masked_sdpa_faster(query, key, value, context, variant.kernel_mask(context))


@pytest.mark.parametrize("n", [40, 64, 1500])
def test_layout_density_counts_the_pairs_a_layout_keeps(n):
    sparse = BlockSparseAttention(SparseOptions(block_size=8, local_blocks=1, global_blocks=1, random_blocks=1),
                                  layer(Role.BIDIRECTIONAL))
    context = build_context(query=torch.zeros(1, 4, n, 8), key=torch.zeros(1, 2, n, 8), attention_mask=None,
                            causal=False, scaling=SCALE, dropout=0.0, cache_window=None, position_ids=None,
                            native_window=None)
    blocks = -(-n // 8)
    pairs = sparse.allowed(context, torch.arange(blocks * 8), torch.arange(blocks * 8))
    mask = sparse.kernel_mask(context)
    assert layouts.density(mask.block_layout, blocks) == pytest.approx(pairs.float().mean().item())


def test_on_the_cpu_dense_block_layouts_take_one_masked_call_and_windows_stay_chunked():
    """Against the chunked engine (the CPU), one masked SDPA call wins for block layouts that keep most pairs
    (a layout's chunks gather little), not for windows, whose chunks skip the keys outside the band."""
    query, key, value = qkv(64, 64)
    dense_layout = BlockSparseAttention(SparseOptions(block_size=8, local_blocks=3, global_blocks=1),
                                        layer(Role.BIDIRECTIONAL))
    route, output, context = call(dense_layout, query, key, value, causal=False)
    assert layouts.density(dense_layout.kernel_mask(context).block_layout, 8) >= layout_routes.MASKED_SDPA_MIN_DENSITY
    assert route == "masked-sdpa"
    torch.testing.assert_close(output, definition(dense_layout, query, key, value, context), rtol=0, atol=1e-12)
    sparse_layout = BlockSparseAttention(SparseOptions(block_size=8, local_blocks=1, global_blocks=1),
                                         layer(Role.BIDIRECTIONAL))
    assert call(sparse_layout, query, key, value, causal=False)[0] == "chunked"
    assert call(sliding(40, role=Role.BIDIRECTIONAL), query, key, value, causal=False)[0] == "chunked"
    assert call(BlockSparseAttention(SparseOptions(block_size=8, local_blocks=3, global_blocks=1), layer()),
                query, key, value)[0] == "chunked"  # causal


def whole_rows_layout(local_blocks: int = 6) -> BlockSparseAttention:
    """Bidirectional blocks of 8 with one global block: at 8 blocks, local_blocks=6 leaves every row whole
    but rows 1 and 7 (each misses the farthest key block), so 6 of 8 rows are whole."""
    return BlockSparseAttention(SparseOptions(block_size=8, local_blocks=local_blocks, global_blocks=1),
                                layer(Role.BIDIRECTIONAL))


@pytest.mark.parametrize("n", [64, 60])
def test_a_nearly_dense_layout_runs_its_whole_rows_on_sdpa_without_a_mask(monkeypatch, n):
    """A bidirectional inference call under a layout whose block rows are mostly whole, on the CPU: SDPA
    without a mask for the runs of whole rows (over every key), the dense mask for the other rows only;
    the definition's result."""
    variant = whole_rows_layout()
    query, key, value = qkv(n, n, seed=n)
    seen = []
    original = layout_routes.sdpa_grouped

    def noted(rows, key, value, mask, *args, **kwargs):
        seen.append(rows.shape[-2])
        return original(rows, key, value, mask, *args, **kwargs)

    monkeypatch.setattr(layout_routes, "sdpa_grouped", noted)
    route, output, context = call(variant, query, key, value, causal=False)
    assert route == "whole-rows"
    assert seen == [8, 40]  # block rows 0 and 2-6 without a mask; rows 1 and 7 under it
    torch.testing.assert_close(output, definition(variant, query, key, value, context), rtol=0, atol=1e-12)


@pytest.mark.parametrize("route", ["whole-rows", "masked-sdpa"])
def test_a_planned_masked_call_makes_its_mask_once(monkeypatch, route):
    """The one-mask routes make the pattern's mask when the call is planned: running the plan again (the
    later layers of a forward, `replay`) asks the rule for nothing and still gives the definition."""
    variant = whole_rows_layout(local_blocks=6 if route == "whole-rows" else 3)
    query, key, value = qkv(64, 64, seed=5)
    context = build_context(query=query, key=key, attention_mask=None, causal=False, scaling=SCALE, dropout=0.0,
                            cache_window=None, position_ids=None, native_window=None)
    assert dispatch.choose(query, key, value, context, "auto", variant.kernel_mask(context), one_mask=True)[0] == route
    layers = [qkv(64, 64, seed=seed) for seed in (5, 6, 7)]  # other tensors of the same shapes: later layers
    expected = [definition(variant, *tensors, context) for tensors in layers]
    asked = []
    allowed = BlockSparseAttention.allowed
    monkeypatch.setattr(BlockSparseAttention, "allowed", lambda self, *args: asked.append(1) or allowed(self, *args))
    launch = variant.plan(query, key, value, context)
    planned = len(asked)
    for tensors, definition_output in zip(layers, expected, strict=True):
        torch.testing.assert_close(launch(*tensors), definition_output, rtol=0, atol=1e-12)
    assert planned >= 1 and len(asked) == planned


def test_whole_rows_are_not_split_where_the_call_needs_more_than_the_layout():
    """Devices where the kernels run, too few whole rows, causal calls, padding and calls that record
    gradients keep their routes."""
    query, key, value = qkv(64, 64)

    def splits(variant, causal=False, padding=None, q=query):
        mask = None if padding is None else make_layout(tokens=64, padding=padding)
        context = build_context(query=q, key=key, attention_mask=mask, causal=causal, scaling=SCALE, dropout=0.0,
                                cache_window=None, position_ids=None, native_window=None)
        return layout_routes.splits_whole_rows(q, key, value, context, variant.kernel_mask(context))

    assert splits(whole_rows_layout())
    with pytest.MonkeyPatch.context() as patched:  # where the kernels run, they take the whole call
        patched.setattr(fused_path, "kernels_preferred", lambda device: True)
        assert not splits(whole_rows_layout())
    assert not splits(whole_rows_layout(local_blocks=5))  # 2 of 8 rows whole
    assert not splits(BlockSparseAttention(SparseOptions(block_size=8, local_blocks=6, global_blocks=1), layer()),
                      causal=True)
    padding = torch.ones(2, 64, dtype=torch.bool)
    padding[1, 60:] = False
    assert not splits(whole_rows_layout(), padding=padding)
    assert not splits(whole_rows_layout(), q=query.clone().requires_grad_())


def sdpa_masks(monkeypatch) -> list:
    """Records, per SDPA call of the chunked engine, its mask and how many keys it got."""
    from hf_efficient_attn import masked

    seen = []
    original = masked.F.scaled_dot_product_attention

    def noted(query, key, value, attn_mask=None, **kwargs):
        seen.append((attn_mask, key.shape[-2]))
        return original(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(masked.F, "scaled_dot_product_attention", noted)
    return seen


@pytest.mark.parametrize("options", [dict(local_blocks=2, global_blocks=1, random_blocks=1, seed=3),
                                     dict(local_blocks=3)], ids=["scattered-blocks", "one-run-of-blocks"])
def test_decoding_under_a_shared_block_layout_gathers_the_visible_keys_without_a_mask(monkeypatch, options):
    """Where the kernels run, a decoding step under a block layout shared by the heads takes the gather
    route: one SDPA call without a mask over exactly the key blocks the query's layout row allows; with
    padding, a static cache or a caller's mask, or under tracing, it does not."""
    monkeypatch.setattr(fused_path, "kernels_preferred", lambda device: True)
    variant = BlockSparseAttention(SparseOptions(block_size=4, **options), layer())
    for tokens in (23, 24, 37):
        query, key, value = qkv(1, tokens, seed=tokens)
        seen = sdpa_masks(monkeypatch)
        route, output, context = call(variant, query, key, value, tokens=tokens)
        assert route == "gather"
        visible = variant.allowed(context, context.query_positions, context.key_positions)
        assert seen == [(None, int(visible.sum()))]
        torch.testing.assert_close(output, definition(variant, query, key, value, context), rtol=0, atol=1e-12)
    padding = torch.ones(2, 37, dtype=torch.bool)
    padding[1, :5] = False
    padded = build_context(query=query, key=key, attention_mask=make_layout(tokens=37, padding=padding), causal=True,
                           scaling=SCALE, dropout=0.0, cache_window=None, position_ids=None, native_window=None)
    assert not layout_routes.gathers_visible_keys(query, key, value, padded, variant.kernel_mask(padded))
    static = build_context(query=query, key=key, attention_mask=make_layout(tokens=37, padding=None,
                                                                            query_start=torch.tensor(30), query_length=1),
                           causal=True, scaling=SCALE, dropout=0.0, cache_window=None, position_ids=None,
                           native_window=None)
    assert not layout_routes.gathers_visible_keys(query, key, value, static, variant.kernel_mask(static))
    caller_mask = torch.ones(2, 1, 1, 37, dtype=torch.bool)
    masked = build_context(query=query, key=key, attention_mask=caller_mask, causal=True, scaling=SCALE, dropout=0.0,
                           cache_window=None, position_ids=None, native_window=None)
    assert not layout_routes.gathers_visible_keys(query, key, value, masked, variant.kernel_mask(masked))
    short_window = build_context(query=query, key=key, attention_mask=None, causal=True, scaling=SCALE, dropout=0.0,
                                 cache_window=None, position_ids=None, native_window=16)
    assert not layout_routes.gathers_visible_keys(query, key, value, short_window, variant.kernel_mask(short_window))
    assert layout_routes.gathers_visible_keys(query, key, value, context, variant.kernel_mask(context))
    monkeypatch.setattr(layout_routes, "tracing", lambda: True)  # a causal layout's candidates are every key then
    assert not layout_routes.gathers_visible_keys(query, key, value, context, variant.kernel_mask(context))


@pytest.mark.parametrize("left_padded", [False, True])
def test_one_query_on_the_chunked_engine_needs_a_mask_only_where_its_keys_are_not_exactly_gathered(
    monkeypatch, left_padded
):
    """A window with sinks over a cache that kept every key: the chunked engine gathers the sinks and the
    window, exactly the keys one query sees, and masks nothing; left padding moves the sinks, so then the
    gathered keys are a superset and are masked. Both equal the definition."""
    variant = sliding(5, sinks=2)
    query, key, value = qkv(1, 20)
    padding = None
    if left_padded:
        padding = torch.ones(2, 20, dtype=torch.bool)
        padding[1, :3] = False
    seen = sdpa_masks(monkeypatch)
    route, output, context = call(variant, query, key, value, tokens=20, padding=padding)
    assert route == "chunked"
    assert len(seen) == 1 and (seen[0][0] is not None) == left_padded
    assert seen[0][1] == (2 + 3 + 5 if left_padded else 2 + 5)
    torch.testing.assert_close(output, definition(variant, query, key, value, context), rtol=0, atol=1e-12)


@pytest.mark.parametrize("q_len, k_len, with_padding", [(1, 10, False), (10, 10, False), (3, 10, False),
                                                        (1, 10, True)],
                         ids=["decoding-step", "aligned-prompt", "queries-against-a-cache", "padded-step"])
def test_a_call_needing_no_mask_is_planned_as_one_bound_sdpa_call(q_len, k_len, with_padding):
    """The plan later layers replay skips the mask logic where the call needs no mask, and computes the same."""
    query, key, value = qkv(q_len, k_len)
    padding = None
    if with_padding:
        padding = torch.ones(2, k_len, dtype=torch.bool)
        padding[0, :3] = False
    context = build_context(query=query, key=key, attention_mask=None if padding is None else
                            make_layout(tokens=k_len, padding=padding, query_start=None, query_length=q_len),
                            causal=True, scaling=SCALE, dropout=0.0, cache_window=None, position_ids=None,
                            native_window=None)
    plan = sdpa_calls.sdpa_plan(query, key, context, decode_kernel=False)
    needs_mask = with_padding or q_len not in (1, k_len)
    assert (plan.func is sdpa_calls.sdpa_attention) == needs_mask
    torch.testing.assert_close(plan(query, key, value), sdpa_calls.sdpa_attention(query, key, value, context),
                               rtol=0, atol=0)
    visible = (context.key_positions[None, :] <= context.query_positions[:, None])[None, None]
    if padding is not None:
        visible = visible & padding[:, None, None, :]
    torch.testing.assert_close(plan(query, key, value), dense_attention(query, key, value, visible, SCALE),
                               rtol=0, atol=1e-12)
