"""Input validation: clear errors, and `supports` reasons."""

from __future__ import annotations

import pytest
import torch
from kernel_reference import DEVICE

from hf_efficient_attn.kernels import KernelInputError, decode_attention, fused_attention, supports


def t(*shape, dtype=torch.float32, device=DEVICE):
    return torch.randn(*shape).to(device=device, dtype=dtype)


def test_supports_ok():
    assert supports(t(1, 4, 8, 64), t(1, 2, 8, 64), t(1, 2, 8, 64)) is None


@pytest.mark.parametrize("scale", [0.0, -0.125, float("inf")])
def test_supports_refuses_a_scale_the_kernels_cannot_take(scale):
    q, k = t(1, 4, 8, 64), t(1, 2, 8, 64)
    assert supports(q, k, k, scale=0.125) is None
    reason = supports(q, k, k, scale=scale)
    assert reason is not None and "positive and finite" in reason and repr(scale) in reason, reason


@pytest.mark.parametrize(("q", "k", "v", "words"), [
    (t(1, 4, 8, 48), t(1, 4, 8, 48), t(1, 4, 8, 48), ["head_dim=48"]),
    (t(1, 4, 8, 64), t(1, 3, 8, 64), t(1, 3, 8, 64), ["multiple", "4", "3"]),
    (t(1, 4, 8, 64, dtype=torch.float64), t(1, 4, 8, 64, dtype=torch.float64),
     t(1, 4, 8, 64, dtype=torch.float64), ["float64", "cast"]),
    (t(1, 4, 8, 64), t(1, 4, 8, 64, dtype=torch.float16), t(1, 4, 8, 64), ["share a dtype"]),
    (t(4, 8, 64), t(4, 8, 64), t(4, 8, 64), ["4-D", "q"]),
    (t(1, 4, 8, 64), t(2, 4, 8, 64), t(2, 4, 8, 64), ["batch"]),
    (t(1, 4, 8, 64), t(1, 4, 8, 64), t(1, 4, 9, 64), ["keys"]),
    (t(1, 4, 8, 64), t(1, 4, 8, 32), t(1, 4, 8, 32), ["head dims differ"]),
])
def test_bad_inputs(q, k, v, words):
    reason = supports(q, k, v)
    assert reason is not None and all(w in reason for w in words), reason
    with pytest.raises(KernelInputError) as err:
        fused_attention(q, k, v, scale=0.1, causal=True)
    assert all(w in str(err.value) for w in words)


def test_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q = t(1, 2, 8, 32, device="cpu")
    reason = supports(q, q, q)
    assert reason is not None and "CUDA" in reason and "TRITON_INTERPRET" in reason
    with pytest.raises(KernelInputError, match="CUDA"):
        fused_attention(q, q, q, scale=0.1, causal=False)


@pytest.mark.parametrize(("kwargs", "words"), [
    (dict(window=(-1, None)), ["window", "left", "-1"]),
    (dict(window=(4,)), ["window", "pair"]),
    (dict(sink_tokens=-2), ["sink_tokens"]),
    (dict(key_padding=torch.ones(1, 7, dtype=torch.bool)), ["key_padding", "(1, 8)"]),
    (dict(block_layout=torch.ones(3, 1, 1, dtype=torch.bool), layout_block_size=8), ["block_layout", "3 heads"]),
    (dict(block_layout=torch.ones(1, 1, 1, dtype=torch.bool), layout_block_size=4), ["too small", "[1, 2, 2]"]),
    (dict(scale=None), ["scale"]),
    (dict(scale=0.0), ["scale", "positive"]),
    (dict(scale=-0.1), ["scale", "positive"]),
])
def test_bad_mask_arguments(kwargs, words):
    q = t(1, 2, 8, 32)
    args = dict(scale=0.1, causal=False)
    args.update({k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()})
    with pytest.raises(KernelInputError) as err:
        fused_attention(q, q, q, **args)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_decode_rejects_long_queries():
    q = t(1, 2, 17, 32)
    with pytest.raises(KernelInputError, match="16"):
        decode_attention(q, q, q, scale=0.1)
