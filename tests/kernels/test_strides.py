"""The kernels take transformers' ``[batch, heads, length, dim]`` views of ``[batch, length, heads, dim]``
projections without copying them, and give the output and gradients in the same layouts (so the transpose
after attention is free), in eager mode and through the ops, whose fake implementations say the same."""

from __future__ import annotations

import pytest
import torch
from kernel_reference import DEVICE, reference, rel_err, tolerance

from hf_efficient_attn import op_window
from hf_efficient_attn.kernels import fused_attention, ops, strides  # noqa: F401 (ops registers the custom ops tested here)


def projected(batch, heads, length, dim, *, seed, grad=True):
    """A tensor laid out as transformers' attention receives it: ``view(b, n, h, d).transpose(1, 2)``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads, dim, generator=gen).to(DEVICE).transpose(1, 2)
    return x.detach().requires_grad_(grad)


def test_kernel_layout_rule():
    views = projected(2, 4, 10, 8, seed=0, grad=False)
    assert not views.is_contiguous() and strides.kernel_ready(views)
    assert strides.dense_inputs(views) is views and strides.kernel_strides(views) == views.stride()
    across = torch.randn(2, 4, 8, 10).transpose(-1, -2)  # the head dim is not the fastest
    assert not strides.kernel_ready(across) and strides.kernel_strides(across) == (320, 80, 8, 1)
    every_other = torch.randn(2, 4, 20, 8)[:, :, ::2]  # gaps between rows
    assert not strides.kernel_ready(every_other) and strides.dense_inputs(every_other).is_contiguous()
    assert strides.empty_in_kernel_layout(views).stride() == views.stride()
    result = torch.randn(2, 4, 10, 8)
    moved = strides.in_kernel_layout(result, views)
    assert moved.stride() == views.stride() and torch.equal(moved, result)
    assert strides.in_kernel_layout(moved, views) is moved


@pytest.mark.parametrize("causal", [True, False])
def test_eager_output_and_gradients_keep_the_projection_layout(causal):
    q, k, v = (projected(2, h, 40, 32, seed=s) for s, h in ((1, 4), (2, 2), (3, 2)))
    kwargs = dict(scale=32 ** -0.5, causal=causal, window=(9, None) if causal else (5, 5))
    out = fused_attention(q, k, v, **kwargs)
    assert out.stride() == q.stride() and out.transpose(1, 2).is_contiguous()
    expected = reference(q, k, v, **kwargs)
    assert rel_err(out, expected) < tolerance(torch.float32)
    grad_out = projected(2, 4, 40, 32, seed=4, grad=False)
    out.backward(grad_out)
    for name, x in (("q", q), ("k", k), ("v", v)):
        assert x.grad.stride() == x.stride(), name
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    reference(q, k, v, **kwargs).backward(grad_out.double())
    for got, want in zip(grads, (q.grad, k.grad, v.grad), strict=True):
        assert rel_err(got, want) < tolerance(torch.float32)


@pytest.mark.parametrize("layout", ["projected", "contiguous", "head dim not fastest"])
def test_the_ops_fake_implementations_give_the_real_layouts(layout):
    q, k, v = (projected(1, h, 24, 32, seed=s) for s, h in ((5, 2), (6, 1), (7, 1)))
    if layout == "contiguous":
        q, k, v = (x.detach().contiguous().requires_grad_() for x in (q, k, v))
    elif layout == "head dim not fastest":
        q = q.detach().transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_()
    args = (q, k, v, None, None, 0.25, True, 6, op_window.NO_BOUND, 0, 0, "", 0, 64)
    torch.library.opcheck(torch.ops.hf_efficient_attn.attention.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    out, lse = torch.ops.hf_efficient_attn.attention(*args)
    assert out.stride() == strides.kernel_strides(q)
    grads = torch.ops.hf_efficient_attn.attention_backward(torch.randn_like(out), q, k, v, out, lse, *args[3:])
    for grad, x in zip(grads, (q, k, v), strict=True):
        assert grad.stride() == strides.kernel_strides(x)


def test_packed_documents_through_the_ops_give_the_same_layouts():
    q, k, v = (projected(2, h, 24, 32, seed=s) for s, h in ((8, 2), (9, 1), (10, 1)))
    documents = torch.tensor([[0] * 10 + [1] * 14, [0] * 5 + [1] * 9 + [2] * 10], device=DEVICE)
    args = (q, k, v, None, documents, 0.25, True, op_window.NO_BOUND, op_window.NO_BOUND, 0, 0, "", 0, 64)
    torch.library.opcheck(torch.ops.hf_efficient_attn.attention.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    out, lse = torch.ops.hf_efficient_attn.attention(*args)
    assert out.stride() == q.stride()
    grads = torch.ops.hf_efficient_attn.attention_backward(torch.randn_like(out), q, k, v, out, lse, *args[3:])
    for grad, x in zip(grads, (q, k, v), strict=True):
        assert grad.stride() == x.stride()
