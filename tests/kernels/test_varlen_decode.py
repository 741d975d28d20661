"""Packed variable-length attention (forward + backward) and the split-key decode kernel."""

from __future__ import annotations

import pytest
import torch
from kernel_reference import DEVICE, LARGE, rand, reference, rel_err, tolerance

from hf_efficient_attn.kernels import decode, decode_attention, fused_attention_varlen


def _cu(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)


VARLEN_CASES = [
    dict(lq=[5, 17, 1, 40], lk=[5, 17, 1, 40], causal=True),
    dict(lq=[5, 17, 1, 40], lk=[9, 30, 16, 40], causal=True),  # cache style per sequence
    dict(lq=[33, 7], lk=[20, 45], causal=False),
    dict(lq=[50, 3, 31], lk=[50, 3, 31], causal=True, window=(6, None), sink_tokens=2),
    dict(lq=[40, 19], lk=[40, 19], causal=False, window=(5, 5), global_tokens=3),
    dict(lq=[0, 20], lk=[0, 20], causal=True),  # an empty sequence
]


@pytest.mark.parametrize("case", VARLEN_CASES, ids=[str(i) for i in range(len(VARLEN_CASES))])
def test_varlen_matches_per_sequence_reference(case, dtype=torch.float32, hq=4, hkv=2, d=32):
    case = dict(case)
    lq, lk, causal = case.pop("lq"), case.pop("lk"), case.pop("causal")
    gen = torch.Generator().manual_seed(sum(lq))
    q = rand(sum(lq), hq, d, dtype=dtype, generator=gen)
    k = rand(sum(lk), hkv, d, dtype=dtype, generator=gen)
    v = rand(sum(lk), hkv, d, dtype=dtype, generator=gen)
    scale = d**-0.5
    out = fused_attention_varlen(q, k, v, _cu(lq), _cu(lk), max(lq), max(lk), scale=scale, causal=causal,
                                 **case)
    assert torch.isfinite(out).all()
    do = torch.randn(out.shape, generator=gen).to(device=DEVICE, dtype=dtype)
    grads = torch.autograd.grad(out, (q, k, v), do)

    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    parts, qs, ks = [], 0, 0
    for nq, nk in zip(lq, lk, strict=True):
        qi = leaves[0][qs:qs + nq].transpose(0, 1)[None]
        ki = leaves[1][ks:ks + nk].transpose(0, 1)[None]
        vi = leaves[2][ks:ks + nk].transpose(0, 1)[None]
        if nq:
            parts.append(reference(qi, ki, vi, scale=scale, causal=causal, **case)[0].transpose(0, 1))
        qs, ks = qs + nq, ks + nk
    ref = torch.cat(parts)
    ref_grads = torch.autograd.grad(ref, leaves, do.double())
    tol = tolerance(dtype)
    assert rel_err(out, ref) < tol
    for name, got, want in zip("qkv", grads, ref_grads, strict=True):
        assert torch.isfinite(got).all(), f"d{name} has NaN"
        assert rel_err(got, want) < tol, f"d{name}: {rel_err(got, want):.2e}"


@pytest.mark.skipif(not LARGE, reason="set HF_EA_TEST_LARGE=1 (meant for CUDA)")
def test_varlen_large_bf16():
    test_varlen_matches_per_sequence_reference(
        dict(lq=[1000, 3000, 17, 2048], lk=[1000, 3000, 17, 2048], causal=True, window=(256, None)),
        dtype=torch.bfloat16, hq=8, hkv=2, d=128)


DECODE_CASES = [
    dict(b=2, hq=4, hkv=2, nq=1, nk=100, d=32),
    dict(b=1, hq=8, hkv=1, nq=4, nk=77, d=64),  # MQA, causal among the 4 new tokens
    dict(b=3, hq=2, hkv=2, nq=16, nk=40, d=80),
    dict(b=2, hq=4, hkv=4, nq=3, nk=130, d=32, padding=True),
]


@pytest.mark.parametrize("case", DECODE_CASES, ids=[str(i) for i in range(len(DECODE_CASES))])
@pytest.mark.parametrize("splits", [None, 1, 3])
def test_decode(case, splits):
    case = dict(case)
    b, hq, hkv, nq, nk, d = (case[x] for x in ("b", "hq", "hkv", "nq", "nk", "d"))
    gen = torch.Generator().manual_seed(nk + (splits or 0))
    q = rand(b, hq, nq, d, generator=gen, requires_grad=False)
    k = rand(b, hkv, nk, d, generator=gen, requires_grad=False)
    v = rand(b, hkv, nk, d, generator=gen, requires_grad=False)
    kp = None
    if case.get("padding"):
        kp = torch.ones(b, nk, dtype=torch.bool)
        kp[0, :60] = False  # left padding
        kp[1, :] = False  # nothing to see: zero output
        kp = kp.to(DEVICE)
    out = decode_attention(q, k, v, scale=d**-0.5, key_padding=kp, num_splits=splits)
    ref = reference(q, k, v, scale=d**-0.5, causal=True, key_padding=kp)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-5
    if kp is not None:
        assert out[1].abs().max() == 0


def test_decode_combines_more_splits_than_one_pass_of_the_combine_kernel_holds():
    gen = torch.Generator().manual_seed(5)
    q = rand(2, 4, 2, 32, generator=gen, requires_grad=False)
    # more splits than the combine kernel takes in one pass for split sizes up to 128 keys (the GPU's tiles)
    keys = (decode.COMBINE_BLOCK_S + 4) * 128
    k, v = (rand(2, 2, keys, 32, generator=gen, requires_grad=False) for _ in range(2))
    kp = torch.ones(2, keys, dtype=torch.bool)
    kp[1, 300:3000] = False  # whole splits with nothing to see
    kp = kp.to(DEVICE)
    setup = decode.prepare_decode(q, k, v, scale=0.2, key_padding=kp, num_splits=2 * decode.COMBINE_BLOCK_S)
    assert setup.splits > decode.COMBINE_BLOCK_S
    out = decode.run_decode(setup, q, k, v)
    assert rel_err(out, reference(q, k, v, scale=0.2, causal=True, key_padding=kp)) < 1e-5
    # the same setup serves other tensors of the same shapes (the other layers of a forward)
    q2, k2, v2 = (t.flip(-2) for t in (q, k, v))
    assert rel_err(decode.run_decode(setup, q2, k2, v2),
                   reference(q2, k2, v2, scale=0.2, causal=True, key_padding=kp)) < 1e-5


@pytest.mark.skipif(not LARGE, reason="set HF_EA_TEST_LARGE=1 (meant for CUDA)")
def test_decode_large_bf16():
    gen = torch.Generator().manual_seed(0)
    q = rand(4, 32, 1, 128, dtype=torch.bfloat16, generator=gen, requires_grad=False)
    k = rand(4, 8, 30000, 128, dtype=torch.bfloat16, generator=gen, requires_grad=False)
    v = rand(4, 8, 30000, 128, dtype=torch.bfloat16, generator=gen, requires_grad=False)
    out = decode_attention(q, k, v, scale=128**-0.5)
    assert rel_err(out, reference(q, k, v, scale=128**-0.5, causal=True)) < 2e-2
