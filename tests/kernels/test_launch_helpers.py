"""Host-side launch helpers of the kernels: plain-Python powers of two and the shared placeholder tensor."""

from __future__ import annotations

import torch
import triton

from hf_efficient_attn.kernels import flash


def test_power_of_2_at_least_matches_triton():
    for n in range(1, 5000):
        assert flash.power_of_2_at_least(n) == triton.next_power_of_2(n), n
    assert flash.power_of_2_at_least(0) == 1


def test_placeholder_tensor_is_made_once_per_device_and_stays_zero():
    first = flash._dummy(torch.device("cpu"))
    assert flash._dummy("cpu") is first
    assert first.dtype == torch.int32 and first.tolist() == [0]
