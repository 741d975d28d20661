"""``backend="cudnn"`` in the dispatch rule: what it forces onto cuDNN, with which band, and what it refuses.

cuDNN itself needs a GPU and the ``cudnn`` extra (its exactness is checked there against float64). Here the
backend's entry point is replaced by a float64 computation of the window exactly as `backends` documents
it (query ``i`` at ``p = i + k_len - q_len`` in causal calls, ``p = i`` otherwise; key ``j`` visible when
``p - j < left`` and ``j - p < right``), so a patched model equal to the chunked engine proves the rule
hands cuDNN the right call and arguments, and every refusal is a clear `FusedPathError`.
"""

from __future__ import annotations

import copy

import pytest
import torch
from band_spec import our_mask
from tiny_models import tiny_llama, tiny_vit, vit_pixels

from hf_efficient_attn import patch_model
from hf_efficient_attn.backends import cudnn_sdpa
from hf_efficient_attn.fused_path import FusedPathError


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
    return calls


def test_where_cudnn_cannot_run_the_error_says_why_and_what_to_use():
    model = patch_model(tiny_llama(), "sliding", window=4, backend="cudnn")
    with pytest.raises(FusedPathError, match="backend='cudnn' cannot run this call on cuDNN") as error:
        model(torch.randint(3, 97, (1, 12)))
    # where cuDNN is missing the message says so; where it is there, the float32 CPU model is what it refuses
    reason = cudnn_sdpa.unavailable_reason() or "cuDNN attention runs float16 and bfloat16"
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
