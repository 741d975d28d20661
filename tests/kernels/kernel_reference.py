"""Independent float64 reference for the masked attention definition, and test helpers."""

from __future__ import annotations

import os

import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
LARGE = os.environ.get("HF_EA_TEST_LARGE", "0") == "1"


def visible(b, hq, nq, nk, *, causal, window=(None, None), sink_tokens=0, global_tokens=0, block_layout=None,
            layout_block_size=64, key_padding=None, device="cpu"):
    """bool [B, Hq, Nq, Nk], written straight from the definition."""
    i = torch.arange(nq, device=device)[:, None]
    j = torch.arange(nk, device=device)[None, :]
    qpos = i + (nk - nq) if causal else i
    m = torch.ones(b, hq, nq, nk, dtype=torch.bool, device=device)
    if causal:
        m &= j <= qpos
    if key_padding is not None:
        m &= key_padding.to(device).bool()[:, None, None, :]
    if block_layout is not None:
        lay = block_layout.to(device).bool()
        lay = lay.expand(hq, -1, -1) if lay.shape[0] == 1 else lay
        qb = (qpos.clamp(min=0) // layout_block_size).expand(nq, nk)
        kb = (j // layout_block_size).expand(nq, nk)
        allowed = lay[:, qb, kb]  # [Hq, Nq, Nk]
        # negative query positions see nothing anyway (causal); keep the lookup in range
        m &= allowed[None]
    left, right = window
    if not (left is None and right is None):
        w = torch.ones(nq, nk, dtype=torch.bool, device=device)
        if left is not None:
            w &= (qpos - j) < left
        if right is not None:
            w &= (j - qpos) < right
        w |= (j < sink_tokens) | (j < global_tokens) | (qpos < global_tokens)
        m &= w
    return m


def reference(q, k, v, *, scale, causal, **mask_kw):
    """float64 attention with the explicit mask; rows with no visible key are 0. Differentiable."""
    b, hq, nq, _ = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = hq // hkv
    q64, k64, v64 = q.double(), k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    m = visible(b, hq, nq, nk, causal=causal, device=q.device, **mask_kw)
    s = (q64 @ k64.transpose(-1, -2)) * scale
    s = s.masked_fill(~m, float("-inf"))
    p = torch.softmax(s, -1)
    p = torch.where(m.any(-1, keepdim=True), p, torch.zeros_like(p))
    return p @ v64


def rand(*shape, dtype=torch.float32, requires_grad=True, generator=None):
    x = torch.randn(*shape, generator=generator, dtype=torch.float32).to(device=DEVICE, dtype=dtype)
    return x.requires_grad_(requires_grad)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def tolerance(dtype):
    """Relative-norm tolerance: fp32 (ieee dots) is tight; half types are bounded by their rounding."""
    return {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]


def check_against_reference(fn, q, k, v, *, scale, causal, dtype=torch.float32, **mask_kw):
    """Run fn (the kernel) forward + backward and compare output and grads with the reference."""
    out = fn(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all(), "kernel output has NaN/inf (unwritten or masked-row bug)"
    do = torch.randn(out.shape, dtype=torch.float32).to(device=out.device, dtype=out.dtype)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), do)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = reference(*leaves, scale=scale, causal=causal, **mask_kw)
    rq, rk, rv = torch.autograd.grad(ref, leaves, do.double())
    tol = tolerance(dtype)
    for name, got, want in (("out", out, ref), ("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
        assert torch.isfinite(got).all(), f"{name} has NaN/inf"
        if want.abs().max() == 0:  # e.g. dq with a single visible key: zero up to rounding
            assert got.abs().max() < 1e-3, f"{name} should be zero, max |{name}| = {got.abs().max():.2e}"
            continue
        err = rel_err(got, want)
        assert err < tol, f"{name}: relative error {err:.2e} > {tol:.0e}"
    return out, (dq, dk, dv), ref

