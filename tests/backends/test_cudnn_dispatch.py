"""``backend="cudnn"`` in the dispatch rule: what it forces onto cuDNN, with which band, and what it refuses.

cuDNN itself needs a GPU and the ``cudnn`` extra (its exactness is checked there against float64). Here the
backend's entry point is replaced by a float64 computation of the window exactly as `backends` documents
it (query ``i`` at ``p = i + k_len - q_len`` in causal calls, ``p = i`` otherwise; key ``j`` visible when
``p - j < left`` and ``j - p < right``), so a patched model equal to the chunked engine proves the rule
hands cuDNN the right call and arguments, and every refusal is a clear `FusedPathError`.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
from band_spec import our_mask
from tiny_models import tiny_llama, tiny_vit, vit_pixels

from hf_efficient_attn import capabilities, dispatch, fused_path, library_routes, patch_model, sdpa_support
from hf_efficient_attn.backends import cudnn_sdpa
from hf_efficient_attn.context import build_context
from hf_efficient_attn.fused_path import FusedPathError, FusedPathFallbackWarning, KernelMask


def documented_window_attention(q, k, v, *, scale, causal, window_left, window_right, key_lengths=None):
    q_len, k_len = q.shape[-2], k.shape[-2]
    mask = our_mask(q_len, k_len, causal, window_left, window_right, torch.tensor([k_len]))[0]
    groups = q.shape[1] // k.shape[1]
    keys, values = k.double().repeat_interleave(groups, 1), v.double().repeat_interleave(groups, 1)
    return ((q.double() @ keys.transpose(-1, -2) * scale + mask).softmax(-1) @ values).to(q.dtype)


@pytest.fixture
def cudnn_calls(monkeypatch):
    """cuDNN made 'available' with the documented semantics computed in float64; its calls recorded."""
    calls = []

    def attention(q, k, v, **arguments):
        calls.append({"q_len": q.shape[-2], "k_len": k.shape[-2], **arguments})
        return documented_window_attention(q, k, v, **arguments)

    monkeypatch.setattr(cudnn_sdpa, "unavailable_reason", lambda: None)
    monkeypatch.setattr(cudnn_sdpa, "supports", lambda *args, **kwargs: None)
    monkeypatch.setattr(cudnn_sdpa, "attention", attention)
    # the same capabilities, on this CPU and its float32 models
    on_cpu = dataclasses.replace(capabilities.CUDNN, devices=frozenset({"cpu"}), dtypes=frozenset({torch.float32}))
    monkeypatch.setattr(library_routes, "CUDNN", on_cpu)
    return calls


def test_where_cudnn_cannot_run_the_error_says_why_and_what_to_use():
    model = patch_model(tiny_llama(), "sliding", window=4, backend="cudnn")
    with pytest.raises(FusedPathError, match="backend='cudnn' cannot run this call on cuDNN") as error:
        model(torch.randint(3, 97, (1, 12)))
    # where cuDNN is missing the message says so; where it is there, its capability row refuses the CPU model
    reason = cudnn_sdpa.unavailable_reason() or "cuDNN attention runs on cuda only, not on cpu"
    assert reason in str(error.value) and "backend='auto'" in str(error.value)


def test_causal_window_goes_to_cudnn_as_the_chunked_engine_computes_it(cudnn_calls):
    base = tiny_llama()
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = patch_model(copy.deepcopy(base), "sliding", window=4, backend="reference")(ids).logits
    got = patch_model(copy.deepcopy(base), "sliding", window=4, backend="cudnn")(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    layers = base.config.num_hidden_layers
    assert len(cudnn_calls) == layers
    assert all(call["causal"] and call["window_left"] == 4 and call["window_right"] is None for call in cudnn_calls)
    assert cudnn_calls[0]["scale"] == pytest.approx(base.config.head_dim ** -0.5)


def test_bidirectional_band_goes_to_cudnn_as_the_chunked_engine_computes_it(cudnn_calls):
    base = tiny_vit()
    pixels = vit_pixels(base)
    expected = patch_model(copy.deepcopy(base), "sliding", window=3, backend="reference")(pixels).logits
    got = patch_model(copy.deepcopy(base), "sliding", window=3, backend="cudnn")(pixels).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert cudnn_calls and all(not call["causal"] for call in cudnn_calls)
    assert {(call["window_left"], call["window_right"]) for call in cudnn_calls} == {(3, 3)}


def test_decoding_after_a_prompt_keeps_queries_aligned_to_the_last_keys(cudnn_calls):
    base = tiny_llama()
    ids = torch.randint(3, 97, (1, 9), generator=torch.Generator().manual_seed(1))
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
    expected = patch_model(copy.deepcopy(base), "sliding", window=100, backend="reference").generate(ids, **settings)
    got = patch_model(copy.deepcopy(base), "sliding", window=100, backend="cudnn").generate(ids, **settings)
    assert torch.equal(got, expected)
    assert {call["q_len"] for call in cudnn_calls} == {9, 1} and max(call["k_len"] for call in cudnn_calls) == 13


@pytest.mark.parametrize(("case", "reason"), [
    ("padding", "padding mask"),
    ("static", "static cache"),
])
def test_calls_cudnn_cannot_take_are_refused_with_the_reason(cudnn_calls, case, reason):
    model = patch_model(tiny_llama(), "sliding", window=100, backend="cudnn")
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    with pytest.raises(FusedPathError, match=reason):
        if case == "padding":
            mask = torch.ones_like(ids)
            mask[1, :3] = 0
            model(ids, attention_mask=mask)
        else:
            model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0, cache_implementation="static")


# ---------------------------------------------------------------------------- backend="auto"


@pytest.fixture
def auto_on_cuda(cudnn_calls, monkeypatch):
    """The rule as it runs on CUDA (kernels preferred), cuDNN 'available', no shape planned yet."""
    monkeypatch.setattr(fused_path, "kernels_preferred", lambda device: True)
    monkeypatch.setattr(library_routes, "_PLANNED_WINDOWS", sdpa_support.ShapeTally())
    return cudnn_calls


def window_call(q_len=256, k_len=256, head_dim=64, *, causal=True, grad=False):
    gen = torch.Generator().manual_seed(q_len + head_dim)
    q = torch.randn(1, 4, q_len, head_dim, generator=gen).requires_grad_(grad)
    k, v = (torch.randn(1, 2, k_len, head_dim, generator=gen) for _ in range(2))
    context = build_context(query=q, key=k, attention_mask=None, causal=causal, scaling=head_dim ** -0.5,
                            dropout=0.0, cache_window=None, position_ids=None, native_window=None)
    return q, k, v, context


def on_cudnn(pattern: KernelMask, plannings: int = 3, **call) -> list[bool]:
    """Whether the same call, planned ``plannings`` times (each in a fresh forward), went to cuDNN; the
    other plannings take the kernels' route (here on the CPU, the chunked engine the kernels fall back to)."""
    chosen = []
    for _ in range(plannings):
        q, k, v, context = window_call(**call)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FusedPathFallbackWarning)
            chosen.append(dispatch.choose(q, k, v, context, "auto", pattern, "sliding")[0] == "cudnn")
    return chosen


def test_auto_runs_a_window_on_cudnn_from_the_second_planning_of_its_shape(auto_on_cuda):
    assert on_cudnn(KernelMask(window=(64, None))) == [False, True, True]
    assert on_cudnn(KernelMask(window=(32, None))) == [False, True, True]  # another window: a new graph
    assert on_cudnn(KernelMask(window=(16, 16)), causal=False) == [False, True, True]

    q, k, v, context = window_call()
    route, launch = dispatch.choose(q, k, v, context, "auto", KernelMask(window=(64, None)), "sliding")
    expected = documented_window_attention(q, k, v, scale=64 ** -0.5, causal=True, window_left=64, window_right=None)
    assert route == "cudnn"
    torch.testing.assert_close(launch(q, k, v), expected)
    assert auto_on_cuda[-1] == {"q_len": 256, "k_len": 256, "scale": 64 ** -0.5, "causal": True, "window_left": 64,
                                "window_right": None}


@pytest.mark.parametrize(("pattern", "call"), [
    (KernelMask(window=(64, None), sink_tokens=4), {}),  # sinks: cuDNN has none
    (KernelMask(window=(None, None)), {}),  # no window: SDPA's call, not a band
    (KernelMask(window=(64, None)), {"q_len": 1}),  # a decoding step: a new shape every step
    (KernelMask(window=(64, None)), {"grad": True}),  # head size 64 with gradients below 32k: Triton is faster
])
def test_auto_keeps_calls_off_cudnn_where_it_does_not_pay(auto_on_cuda, pattern, call):
    assert not any(on_cudnn(pattern, **call))


def test_auto_takes_cudnn_with_gradients_at_head_size_128(auto_on_cuda):
    assert on_cudnn(KernelMask(window=(64, None)), head_dim=128, grad=True) == [False, True, True]


def test_auto_keeps_the_kernels_where_cudnn_is_missing_or_refuses(auto_on_cuda, monkeypatch):
    monkeypatch.setattr(cudnn_sdpa, "unavailable_reason", lambda: "nvidia-cudnn-frontend is not installed")
    assert not any(on_cudnn(KernelMask(window=(64, None))))
    monkeypatch.setattr(cudnn_sdpa, "unavailable_reason", lambda: None)
    monkeypatch.setattr(cudnn_sdpa, "supports", lambda *args, **kwargs: "float32")
    assert not any(on_cudnn(KernelMask(window=(64, None))))
