"""On a Hopper GPU with the ``fa4`` extra: FlashAttention-4 against a float64 reference of our window
(outputs and gradients, grouped-query heads, caches), under torch.compile, and in patched models."""

from __future__ import annotations

import copy

import pytest
import torch
from band_spec import our_mask
from model_checks import assert_backend_matches_reference, gpu_llama

from hf_efficient_attn import library_routes, patch_model
from hf_efficient_attn.backends import fa4

pytestmark = pytest.mark.skipif(not fa4.available(), reason=f"FlashAttention-4 backend: {fa4.unavailable_reason()}")


def reference(q, k, v, scale, causal, left, right):
    mask = our_mask(q.shape[-2], k.shape[-2], causal, left, right, torch.tensor([k.shape[-2]]))[0].to(q.device)
    groups = q.shape[1] // k.shape[1]
    keys, values = (t.double().repeat_interleave(groups, 1) for t in (k, v))
    return (q.double() @ keys.transpose(-1, -2) * scale + mask).softmax(-1) @ values


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected).norm() / expected.norm()).item()


CALLS = [  # (q_len, k_len, causal, window_left, window_right)
    (1000, 1000, True, None, None),
    (1000, 1000, True, 256, None),
    (4096, 4096, True, 1024, None),
    (1000, 1000, False, 128, 128),
    (1000, 1000, False, None, None),
    (200, 1000, True, 300, None),  # a chunk of queries after a cache
]


@pytest.mark.parametrize("head_dim", fa4.HEAD_DIMS)
@pytest.mark.parametrize("call", CALLS, ids=lambda c: "q{}-k{}-{}-{}-{}".format(*c))
def test_output_and_gradients_match_float64(call, head_dim):
    q_len, k_len, causal, left, right = call
    gen = torch.Generator(device="cuda").manual_seed(q_len + head_dim)
    q = torch.randn(2, 8, q_len, head_dim, device="cuda", generator=gen, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(2, 2, k_len, head_dim, device="cuda", generator=gen, dtype=torch.bfloat16, requires_grad=True)
            for _ in range(2))
    scale = head_dim ** -0.5
    assert fa4.supports(q, k, v, causal=causal, window_left=left, window_right=right, needs_grad=True) is None
    out = fa4.attention(q, k, v, scale=scale, causal=causal, window_left=left, window_right=right)
    grad = torch.randn_like(out)
    out.backward(grad)
    ours = [out, q.grad, k.grad, v.grad]
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = reference(*leaves, scale, causal, left, right)
    expected.backward(grad.double())
    for name, got, want in zip(["o", "dq", "dk", "dv"], ours, [expected, *(t.grad for t in leaves)], strict=True):
        assert relative_error(got, want) < 1e-2, name


def test_compiles_as_one_op_with_its_backward():
    q = torch.randn(1, 8, 512, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(1, 2, 512, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))

    def loss(q, k, v):
        return fa4.attention(q, k, v, scale=0.125, causal=True, window_left=100).float().square().sum()

    explained = torch._dynamo.explain(loss)(q, k, v)
    assert explained.graph_break_count == 0
    eager = torch.autograd.grad(loss(q, k, v), (q, k, v))
    compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True)(q, k, v), (q, k, v))
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("window", [8, 64])
def test_patched_llama_on_fa4_matches_the_reference_forward_and_backward(window):
    ids = torch.randint(3, 97, (2, 120), generator=torch.Generator().manual_seed(0)).cuda()
    assert_backend_matches_reference("sliding", "fa4", ids, window=window)


def test_auto_moves_a_repeated_window_configuration_to_fa4_and_the_logits_stay(monkeypatch):
    monkeypatch.setattr(library_routes, "FA4_WINDOW_MIN_QUERIES", 128)  # short prompts stand for long ones
    base = gpu_llama()
    reference_model = patch_model(copy.deepcopy(base), "sliding", window=24, backend="reference")
    model = patch_model(copy.deepcopy(base).to(torch.bfloat16), "sliding", window=24)
    calls = []
    attention = fa4.attention
    monkeypatch.setattr(fa4, "attention", lambda *a, **k: calls.append(k) or attention(*a, **k))
    with torch.no_grad():
        for length, on_fa4 in ((200, False), (260, True)):  # another length: the configuration is the same
            ids = torch.randint(3, 97, (2, length), generator=torch.Generator().manual_seed(length)).cuda()
            calls.clear()
            got = model(ids).logits
            assert bool(calls) == on_fa4
            torch.testing.assert_close(got.float(), reference_model(ids).logits, atol=5e-2, rtol=5e-2)
    assert len(calls) == base.config.num_hidden_layers and {c["window_left"] for c in calls} == {24}
