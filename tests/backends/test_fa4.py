"""The FlashAttention-4 backend on the CPU: its window mapping against our convention pair by pair, its
refusals, and the dispatch rule around it (``backend="fa4"`` forced, and ``"auto"``).

FlashAttention-4 itself needs a Hopper GPU and the ``fa4`` extra (its exactness is checked there,
test_fa4_gpu.py). Here its entry point is replaced by a float64 computation of FlashAttention's documented
band (counted in keys besides the query's own, aligned to the last keys), so a patched model equal to the
chunked engine proves the rule hands it the right call and window.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import warnings

import pytest
import torch
from band_spec import our_mask
from tiny_models import tiny_llama

from hf_efficient_attn import capabilities, dispatch, fused_path, library_routes, patch_model, sdpa_support
from hf_efficient_attn.backends import cudnn_sdpa, fa4
from hf_efficient_attn.context import build_context
from hf_efficient_attn.fused_path import FusedPathError, FusedPathFallbackWarning, KernelMask


def flash_band(q_len: int, k_len: int, causal: bool, left: int | None, right: int | None) -> torch.Tensor:
    """Bool ``[q_len, k_len]``: FlashAttention's mask for ``causal`` and ``window_size=(left, right)`` (None:
    unbounded), its band around the diagonal ``i + k_len - q_len``."""
    i = torch.arange(q_len)[:, None] + (k_len - q_len)
    j = torch.arange(k_len)[None, :]
    seen = torch.ones(q_len, k_len, dtype=torch.bool)
    if causal:
        seen &= j <= i
    if left is not None:
        seen &= j >= i - left
    if right is not None:
        seen &= j <= i + right
    return seen


SIDES = (None, 1, 2, 3, 5, 9)


@pytest.mark.parametrize("causal", [True, False])
def test_every_window_it_takes_is_ours_pair_by_pair(causal):
    taken = 0
    for q_len, k_len, left, right in itertools.product((1, 3, 7), (1, 3, 7, 12), SIDES, SIDES):
        window = fa4.fa4_window(causal, left, right, q_len, k_len)
        if isinstance(window, str):
            continue
        taken += 1
        ours = our_mask(q_len, k_len, causal, left, right, torch.tensor([k_len]))[0] == 0
        theirs = flash_band(q_len, k_len, causal, *window)
        assert torch.equal(ours, theirs), (causal, q_len, k_len, left, right, window)
    assert taken > 100


@pytest.mark.parametrize(("args", "expected"), [
    ((True, None, None, 4, 8), (None, 0)),  # plain causal over a cache
    ((True, 1024, None, 16, 16), (1023, 0)),  # a causal window: the query and the 1023 keys before it
    ((False, 4, 4, 8, 8), (3, 3)),  # a bidirectional band |i - j| < 4
    ((False, None, None, 3, 9), (None, None)),  # no window at all, any shapes
])
def test_window_mapping_examples(args, expected):
    assert fa4.fa4_window(*args) == expected


@pytest.mark.parametrize(("args", "reason"), [
    ((True, None, None, 8, 4), "more queries (8) than keys (4)"),
    ((False, 4, None, 4, 8), "FlashAttention aligns its band to the last keys, ours to the first"),
    ((True, 0, None, 4, 4), "window_left must be None or an int >= 1"),
    ((False, 3, 0, 4, 4), "window_right must be None or an int >= 1"),
    ((True, None, None, 0, 4), "needs at least one of each"),
])
def test_windows_it_cannot_express_are_refused_with_the_reason(args, reason):
    assert reason in fa4.fa4_window(*args)


def tensors(batch=2, q_heads=4, kv_heads=2, q_len=6, k_len=6, dim=64, dtype=torch.bfloat16):
    return (torch.zeros(batch, q_heads, q_len, dim, dtype=dtype), torch.zeros(batch, kv_heads, k_len, dim, dtype=dtype),
            torch.zeros(batch, kv_heads, k_len, dim, dtype=dtype))


REFUSALS = {
    "float32": (tensors(dtype=torch.float32), {}, "runs float16 and bfloat16"),
    "head dim 80": (tensors(dim=80), {}, "head_dim=80: this backend runs FlashAttention-4 at head sizes 64, 96, 128"),
    "6 heads over 4": (tensors(q_heads=6, kv_heads=4), {}, "must be a multiple of key/value heads"),
    "3-D query": ((tensors()[0][0], *tensors()[1:]), {}, "query must be a 4-D tensor"),
    "on the CPU": (tensors(), {}, "FlashAttention-4 runs CUDA tensors only"),
    "band over a cache": (tensors(q_len=2), {"causal": False, "window_left": 3}, "aligns its band to the last keys"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_each_refusal_says_why(name):
    (q, k, v), flags, expected = REFUSALS[name]
    assert expected in fa4.supports(q, k, v, **{"causal": True, **flags})


# ---------------------------------------------------------------------------- the dispatch rule


def documented_flash_attention(q, k, v, *, scale, causal, window_left, window_right):
    """What `fa4.attention` computes, by its documentation: FlashAttention's band for `fa4_window`."""
    q_len, k_len = q.shape[-2], k.shape[-2]
    window = fa4.fa4_window(causal, window_left, window_right, q_len, k_len)
    assert not isinstance(window, str), window
    mask = torch.zeros(q_len, k_len, dtype=torch.float64).masked_fill(~flash_band(q_len, k_len, causal, *window),
                                                                      float("-inf"))
    groups = q.shape[1] // k.shape[1]
    keys, values = k.double().repeat_interleave(groups, 1), v.double().repeat_interleave(groups, 1)
    return ((q.double() @ keys.transpose(-1, -2) * scale + mask).softmax(-1) @ values).to(q.dtype)


@pytest.fixture
def fa4_calls(monkeypatch):
    """FlashAttention-4 made 'available' with its documented semantics computed in float64; calls recorded."""
    calls = []

    def attention(q, k, v, **arguments):
        calls.append({"q_len": q.shape[-2], "k_len": k.shape[-2], **arguments})
        return documented_flash_attention(q, k, v, **arguments)

    def supports(q, k, v, *, causal, window_left, window_right, needs_grad):
        if q.shape[-1] not in fa4.HEAD_DIMS:
            return f"head_dim={q.shape[-1]}"
        window = fa4.fa4_window(causal, window_left, window_right, q.shape[-2], k.shape[-2])
        return window if isinstance(window, str) else None

    monkeypatch.setattr(fa4, "unavailable_reason", lambda: None)
    monkeypatch.setattr(fa4, "supports", supports)
    monkeypatch.setattr(fa4, "attention", attention)
    on_cpu = dataclasses.replace(capabilities.FA4, devices=frozenset({"cpu"}), dtypes=frozenset({torch.float32}))
    monkeypatch.setattr(library_routes, "FA4", on_cpu)
    return calls


@pytest.mark.parametrize("window", [3, 8])
def test_forced_fa4_runs_the_window_exactly_in_a_model(fa4_calls, window):
    base = tiny_llama(head_dim=64, hidden_size=256, num_attention_heads=4, num_key_value_heads=2)
    ids = torch.randint(3, 97, (2, 14), generator=torch.Generator().manual_seed(0))
    expected = patch_model(copy.deepcopy(base), "sliding", window=window, backend="reference")(ids).logits
    got = patch_model(copy.deepcopy(base), "sliding", window=window, backend="fa4")(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert fa4_calls and {call["window_left"] for call in fa4_calls} == {window}


def test_forced_fa4_refuses_what_its_row_lacks_and_says_what_to_use(fa4_calls):
    model = patch_model(tiny_llama(head_dim=64, hidden_size=256, num_attention_heads=4, num_key_value_heads=2),
                        "sliding", window=4, sink_tokens=2, backend="fa4")
    with pytest.raises(FusedPathError, match="backend='fa4' cannot run this call on FlashAttention-4: "
                                             "FlashAttention-4 cannot run sink tokens") as error:
        model(torch.randint(3, 97, (1, 12)))
    assert "backend='auto'" in str(error.value)


def test_where_fa4_is_missing_the_error_says_how_to_install_it(monkeypatch):
    missing = "flash-attn-4 is not installed (no module 'flash_attn.cute'); install it with `pip install 'hf-efficient-attn[fa4]'`"
    monkeypatch.setattr(fa4, "unavailable_reason", lambda: missing)
    model = patch_model(tiny_llama(), "sliding", window=4, backend="fa4")
    with pytest.raises(FusedPathError, match="backend='fa4' cannot run this call") as error:
        model(torch.randint(3, 97, (1, 12)))
    assert missing in str(error.value)


@pytest.fixture
def auto_on_cuda(fa4_calls, monkeypatch):
    """The rule as it runs on CUDA (kernels preferred), FlashAttention-4 'available', nothing planned yet."""
    monkeypatch.setattr(fused_path, "kernels_preferred", lambda device: True)
    monkeypatch.setattr(library_routes, "_PLANNED_FA4", sdpa_support.ShapeTally())
    monkeypatch.setattr(library_routes, "_PLANNED_WINDOWS", sdpa_support.ShapeTally())
    # short calls stand for long ones: its thresholds scaled down by 64
    monkeypatch.setattr(library_routes, "FA4_WINDOW_MIN_QUERIES", library_routes.FA4_WINDOW_MIN_QUERIES // 64)
    monkeypatch.setattr(library_routes, "FA4_EXACT_MIN_QUERIES", library_routes.FA4_EXACT_MIN_QUERIES // 64)
    monkeypatch.setattr(library_routes, "SMALL_HEAD_WINDOW_GRAD_MIN_QUERIES",
                        library_routes.SMALL_HEAD_WINDOW_GRAD_MIN_QUERIES // 64)
    return fa4_calls


def routes(pattern: KernelMask, plannings: int = 3, *, q_len=256, k_len=256, head_dim=64, causal=True, grad=False,
           growing=True):
    """The route of the same kind of call planned ``plannings`` times, each in a fresh forward, one token
    longer each time where ``growing``."""
    chosen = []
    for planning in range(plannings):
        gen = torch.Generator().manual_seed(planning)
        extra = planning if growing else 0
        q = torch.randn(1, 4, q_len + extra, head_dim, generator=gen).requires_grad_(grad)
        k, v = (torch.randn(1, 2, k_len + extra, head_dim, generator=gen) for _ in range(2))
        context = build_context(query=q, key=k, attention_mask=None, causal=causal, scaling=head_dim ** -0.5,
                                dropout=0.0, cache_window=None, position_ids=None, native_window=None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FusedPathFallbackWarning)
            route, launch = dispatch.choose(q, k, v, context, "auto", pattern, "sliding")
        if route == "fa4":
            band = pattern.window if pattern.window[0] is not None and pattern.window[0] < k.shape[-2] else (None, None)
            expected = documented_flash_attention(q, k, v, scale=head_dim ** -0.5, causal=causal,
                                                  window_left=band[0], window_right=band[1])
            torch.testing.assert_close(launch(q, k, v), expected)
        chosen.append(route)
    return chosen


def test_auto_runs_a_window_on_fa4_from_the_second_planning_of_its_configuration(auto_on_cuda):
    # the lengths change between plannings: FlashAttention-4 compiles per configuration, not per length
    assert [route == "fa4" for route in routes(KernelMask(window=(64, None)))] == [False, True, True]
    assert [route == "fa4" for route in routes(KernelMask(window=(16, 16)), causal=False)] == [False, True, True]
    assert [route == "fa4" for route in routes(KernelMask(window=(64, None)), grad=True, head_dim=128)] == [
        False, True, True]


def test_auto_keeps_small_head_windows_with_gradients_on_the_kernels_below_the_threshold(auto_on_cuda):
    # at head size 64 the Triton kernels' backward is faster there; inference calls still go to FlashAttention-4
    grad_min = library_routes.SMALL_HEAD_WINDOW_GRAD_MIN_QUERIES
    assert "fa4" not in routes(KernelMask(window=(64, None)), grad=True, q_len=grad_min - 8, k_len=grad_min - 8)
    assert [route == "fa4" for route in routes(KernelMask(window=(64, None)), q_len=grad_min - 8,
                                               k_len=grad_min - 8)] == [False, True, True]
    assert [route == "fa4" for route in routes(KernelMask(window=(64, None)), grad=True, q_len=grad_min,
                                               k_len=grad_min)] == [False, True, True]


def test_auto_runs_long_exact_calls_on_fa4_and_short_ones_on_sdpa(auto_on_cuda):
    exact_min = library_routes.FA4_EXACT_MIN_QUERIES
    assert routes(KernelMask(window=(None, None)), q_len=exact_min, k_len=exact_min) == ["sdpa", "fa4", "fa4"]
    assert routes(KernelMask(window=(None, None)), q_len=exact_min - 8, k_len=exact_min - 8) == ["sdpa"] * 3
    # a window with sinks that covers the call is plain causal attention: the configuration compiled above
    assert routes(KernelMask(window=(100000, None), sink_tokens=4), q_len=exact_min, k_len=exact_min) == ["fa4"] * 3
    assert auto_on_cuda[-1]["window_left"] is None  # no band
    assert routes(KernelMask(window=(None, None)), causal=False, q_len=exact_min, k_len=exact_min)[1:] == ["fa4"] * 2


@pytest.mark.parametrize(("pattern", "call"), [
    (KernelMask(window=(64, None), sink_tokens=4), {}),  # sinks: FlashAttention-4 has none here
    (KernelMask(window=(64, None)), {"q_len": 1, "k_len": 300}),  # a decoding step
    (KernelMask(window=(64, None)), {"head_dim": 32}),  # a head size it does not take
    (KernelMask(window=(64, None)), {"q_len": 200, "k_len": 200}),  # too few queries for its host time
])
def test_auto_keeps_calls_off_fa4_where_it_cannot_or_does_not_pay(auto_on_cuda, pattern, call):
    assert "fa4" not in routes(pattern, **call)


def test_auto_prefers_fa4_to_cudnn_where_both_run_a_window(auto_on_cuda, monkeypatch):
    monkeypatch.setattr(cudnn_sdpa, "unavailable_reason", lambda: None)
    monkeypatch.setattr(cudnn_sdpa, "supports", lambda *args, **kwargs: None)
    monkeypatch.setattr(library_routes, "CUDNN", dataclasses.replace(capabilities.CUDNN, devices=frozenset({"cpu"}),
                                                               dtypes=frozenset({torch.float32})))
    first, *later = routes(KernelMask(window=(64, None)), growing=False)
    assert first not in ("fa4", "cudnn") and later == ["fa4", "fa4"]


def test_the_cute_dsl_compile_notice_is_hidden_and_nothing_else():
    notice = ("Argument aux_data (position 17) cannot be converted to a JitArgument for function 'f'. Its type "
              "`<class 'flash_attn.cute.utils.AuxData'>` is not supported.")
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        fa4._quiet_compile_notice.cache_clear()
        fa4._quiet_compile_notice()
        warnings.warn(notice, UserWarning, stacklevel=1)
        warnings.warn("Argument q (position 0) cannot be converted", UserWarning, stacklevel=1)
    assert [str(w.message) for w in shown] == ["Argument q (position 0) cannot be converted"]


@pytest.mark.parametrize("backend", [fa4, cudnn_sdpa])
def test_a_negative_window_side_is_refused_not_read_as_unbounded(backend):
    q, k, v = tensors()
    with pytest.raises(ValueError, match="window_left must be None or an int >= 0, got -1"):
        backend.attention(q, k, v, scale=0.125, causal=True, window_left=-1)
