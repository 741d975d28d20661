"""On a GPU with the ``cudnn`` extra: a model patched with ``backend="cudnn"`` computes what the Triton
kernels compute, forward and backward (bf16, against the float32 chunked engine)."""

from __future__ import annotations

import copy

import pytest
import torch
from model_checks import assert_backend_matches_reference, gpu_llama

from hf_efficient_attn import patch_model
from hf_efficient_attn.backends import cudnn_sdpa, fa4

pytestmark = pytest.mark.skipif(not cudnn_sdpa.available(), reason=f"cuDNN backend: {cudnn_sdpa.unavailable_reason()}")


@pytest.mark.parametrize("window", [8, 64])
def test_patched_llama_on_cudnn_matches_the_reference_forward_and_backward(window):
    ids = torch.randint(3, 97, (2, 40), generator=torch.Generator().manual_seed(0)).cuda()
    assert_backend_matches_reference("sliding", "cudnn", ids, window=window)


def test_auto_moves_a_repeated_window_call_to_cudnn_and_the_logits_stay(monkeypatch):
    monkeypatch.setattr(fa4, "unavailable_reason", lambda: "FlashAttention-4 left out: cuDNN's turn")  # it goes first
    base = gpu_llama()
    ids = torch.randint(3, 97, (2, 200), generator=torch.Generator().manual_seed(1)).cuda()
    reference = patch_model(copy.deepcopy(base), "sliding", window=24, backend="reference")
    with torch.no_grad():
        expected = reference(ids).logits
        model = patch_model(copy.deepcopy(base).to(torch.bfloat16), "sliding", window=24)
        calls = []
        attention = cudnn_sdpa.attention
        monkeypatch.setattr(cudnn_sdpa, "attention", lambda *a, **k: calls.append(k) or attention(*a, **k))
        first = model(ids).logits
        assert not calls  # a shape planned for the first time runs the Triton kernels
        second = model(ids).logits
    assert len(calls) == base.config.num_hidden_layers and {c["window_left"] for c in calls} == {24}
    for got in (first, second):
        torch.testing.assert_close(got.float(), expected, atol=5e-2, rtol=5e-2)
