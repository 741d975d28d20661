"""Host-side launch helpers of the kernels: plain-Python powers of two, the shared placeholder tensor, and
inference calls that skip autograd."""

from __future__ import annotations

import torch
import triton
from kernel_reference import DEVICE, rand, reference, rel_err, tolerance

from hf_efficient_attn.kernels import flash, function, fused_attention, fused_attention_varlen


def test_power_of_2_at_least_matches_triton():
    for n in range(1, 5000):
        assert flash.power_of_2_at_least(n) == triton.next_power_of_2(n), n
    assert flash.power_of_2_at_least(0) == 1


def test_placeholder_tensor_is_made_once_per_device_and_stays_zero():
    first = flash._dummy(torch.device("cpu"))
    assert flash._dummy("cpu") is first
    assert first.dtype == torch.int32 and first.tolist() == [0]


def test_inference_calls_go_straight_to_the_forward_kernel(monkeypatch):
    def no_autograd(*args):
        raise AssertionError("an inference call built an autograd node")

    gen = torch.Generator().manual_seed(3)
    q, k, v = (rand(2, 2, 37, 32, generator=gen) for _ in range(3))
    expected = reference(q, k, v, scale=32**-0.5, causal=True, window=(9, None))
    monkeypatch.setattr(function._FusedAttention, "apply", no_autograd)
    with torch.no_grad():
        out = fused_attention(q, k, v, scale=32**-0.5, causal=True, window=(9, None))
    assert out.grad_fn is None and rel_err(out, expected) < tolerance(torch.float32)
    plain = [t.detach() for t in (q, k, v)]  # nothing asks for a gradient, even with grad mode on
    out = fused_attention(*plain, scale=32**-0.5, causal=True, window=(9, None))
    assert out.grad_fn is None and rel_err(out, expected) < tolerance(torch.float32)

    packed = [t.detach()[0].transpose(0, 1).contiguous() for t in (q, k, v)]  # one sequence, [T, H, D]
    cu = torch.tensor([0, 37], dtype=torch.int32, device=DEVICE)
    out = fused_attention_varlen(*packed, cu, cu, 37, 37, scale=32**-0.5, causal=True, window=(9, None))
    assert rel_err(out.transpose(0, 1), expected[0]) < tolerance(torch.float32)
