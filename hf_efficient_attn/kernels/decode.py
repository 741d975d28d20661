"""Split-key decode attention (flash-decoding) for a few new query tokens against a long cache.

A program owns one key/value head and one contiguous chunk of keys. It packs all query rows of the
head's group (GROUP query heads x Nq tokens) into one tile, so each K/V tile is read once per group,
and runs the online softmax of `flash.py` over its chunk. It writes the chunk's normalised partial
output and its log-sum-exp (base 2); a combine kernel then weights the partials by
exp2(lse_s - max_s lse_s). Query token i sees keys j <= Nk - Nq + i that are not padding.

A call is settled once from its shapes (`prepare_decode`: checks, splits, the key mask as int8) and then
costs two launches and their buffers (`run_decode`), so the layers of one forward and the steps of
eager decoding spend little host time on it: at batch 1 a decoding step waits on the host.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .checks import KernelInputError, _common_reason
from .flash import _poison, power_of_2_at_least
from .relaunch import Relauncher

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")
_UPCAST_DOTS = tl.constexpr(INTERPRET)


@triton.jit
def _decode_split(Q, K, V, OP, LP, KPAD,
                  sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sopb, soph, sopn, sops, slb, slh, sln, skpb,
                  HKV, GROUP, NQ, NK, CHUNK, qk_scale,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
                  HAS_KPAD: tl.constexpr, IEEE: tl.constexpr):
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HKV).to(tl.int64)
    hk = pid_bh % HKV
    r = tl.arange(0, BLOCK_R)
    g = r // NQ
    i = r % NQ
    h = (hk * GROUP + g).to(tl.int64)
    rows_ok = r < GROUP * NQ
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * sqb + h[:, None] * sqh + i[:, None] * sqn + offs_d[None, :],
                mask=rows_ok[:, None] & d_ok[None, :], other=0.0)
    qp = i + NK - NQ
    k_base = K + b * skb + hk.to(tl.int64) * skh
    v_base = V + b * svb + hk.to(tl.int64) * svh
    start = pid_s * CHUNK
    end = tl.minimum(start + CHUNK, NK)
    m_i = tl.zeros([BLOCK_R], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for n in range(start, end, BLOCK_N):
        offs_n = n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < end
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + offs_n[:, None].to(tl.int64) * skn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None].to(tl.int64) * svn + offs_d[None, :], mask=kv_mask, other=0.0)
        if _UPCAST_DOTS:  # the CPU interpreter multiplies bfloat16 tiles wrongly
            s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)))
        elif IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        vis = n_ok[None, :] & (offs_n[None, :] <= qp[:, None])
        if HAS_KPAD:
            kp = tl.load(KPAD + b * skpb + offs_n, mask=n_ok, other=0)
            vis = vis & (kp[None, :] != 0)
        s = tl.where(vis, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        if _UPCAST_DOTS:
            acc = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32), acc * alpha[:, None])
        elif IEEE:
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
        else:
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(l_safe))
    op = OP + b * sopb + h[:, None] * soph + i[:, None] * sopn + pid_s * sops + offs_d[None, :]
    tl.store(op, out, mask=rows_ok[:, None] & d_ok[None, :])
    tl.store(LP + b * slb + h * slh + i * sln + pid_s, lse, mask=rows_ok)


@triton.jit
def _decode_combine(OP, LP, OUT, SPLITS, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """One query row's output from its splits' normalised partials [S, D] and base-2 log-sum-exps [S]:
    weights 2^(lse_s - max) over their sum; a row that saw no key (every lse -inf) gets 0."""
    row = tl.program_id(0).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    top = tl.full([BLOCK_S], float("-inf"), tl.float32)
    for first in range(0, SPLITS, BLOCK_S):
        offs_s = first + tl.arange(0, BLOCK_S)
        lse = tl.load(LP + row * SPLITS + offs_s, mask=offs_s < SPLITS, other=float("-inf"))
        top = tl.maximum(top, lse)
    top_all = tl.max(top, 0)
    top_all = tl.where(top_all == float("-inf"), 0.0, top_all)
    total = tl.zeros([BLOCK_S], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for first in range(0, SPLITS, BLOCK_S):
        offs_s = first + tl.arange(0, BLOCK_S)
        s_ok = offs_s < SPLITS
        weight = tl.math.exp2(tl.load(LP + row * SPLITS + offs_s, mask=s_ok, other=float("-inf")) - top_all)
        part = tl.load(OP + (row * SPLITS + offs_s[:, None]) * HEAD_DIM + offs_d[None, :],
                       mask=s_ok[:, None] & d_ok[None, :], other=0.0)
        total += weight
        acc += tl.sum(part * weight[:, None], 0)
    out = acc / tl.maximum(tl.sum(total, 0), 1.1754943508222875e-38)
    tl.store(OUT + row * HEAD_DIM + offs_d, out, mask=d_ok)


_DECODE = Relauncher(_decode_split)
_COMBINE = Relauncher(_decode_combine)
COMBINE_BLOCK_S = 32
"""Splits the combine kernel weighs per pass over a row's partials (it loops where there are more)."""


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


@dataclass(frozen=True, eq=False)
class DecodeSetup:
    """A decoding call's launch settled from its shapes (`prepare_decode`): checked, split and with its
    key mask in kernel form, so the layers of one forward, which make the same call on their own tensors,
    pay only the two launches and their buffers (`run_decode`)."""

    shape: tuple[int, int, int, int]
    key_heads: int
    keys: int
    splits: int
    chunk: int
    key_padding: torch.Tensor | None
    scale: float
    meta: dict
    meta_key: tuple
    combine_meta: dict
    combine_key: tuple


def prepare_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                   key_padding: torch.Tensor | None = None, num_splits: int | None = None) -> DecodeSetup | None:
    """Check a decoding call and settle its launch; None when it has nothing to compute (empty shapes)."""
    reason = _common_reason(q, k, v, dense=True)
    if reason:
        raise KernelInputError(reason)
    b, hq, nq, d = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    if nq > 16:
        raise KernelInputError(f"decode_attention takes at most 16 query tokens, got Nq={nq}; use fused_attention")
    if key_padding is not None and tuple(key_padding.shape) != (b, nk):
        raise KernelInputError(f"key_padding must have shape (batch, Nk) = ({b}, {nk}), got "
                               f"{tuple(key_padding.shape)}")
    if b == 0 or nq == 0 or nk == 0:
        return None
    group = hq // hkv
    block_r = max(16, power_of_2_at_least(group * nq))
    block_n = 16 if INTERPRET else (64 if block_r <= 64 else 32)
    if num_splits is None:
        want = max(1, (2 * _num_sms(q.device)) // max(1, b * hkv))
        num_splits = min(want, triton.cdiv(nk, block_n))
    chunk = triton.cdiv(triton.cdiv(nk, max(1, num_splits)), block_n) * block_n
    meta = dict(HEAD_DIM=d, BLOCK_D=max(16, power_of_2_at_least(d)), BLOCK_R=block_r, BLOCK_N=block_n,
                HAS_KPAD=key_padding is not None, IEEE=q.dtype == torch.float32,
                num_warps=4, num_stages=1 if INTERPRET else 3)
    combine_meta = dict(HEAD_DIM=d, BLOCK_S=COMBINE_BLOCK_S, BLOCK_D=meta["BLOCK_D"], num_warps=2)
    kp = None if key_padding is None else key_padding.to(torch.int8).contiguous()
    return DecodeSetup(shape=(b, hq, nq, d), key_heads=hkv, keys=nk, splits=triton.cdiv(nk, chunk), chunk=chunk,
                       key_padding=kp, scale=float(scale) * 1.4426950408889634, meta=meta,
                       meta_key=tuple(meta.items()), combine_meta=combine_meta,
                       combine_key=tuple(combine_meta.items()))


def run_decode(setup: DecodeSetup, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The decoding call ``setup`` was prepared for, on these tensors (of the shapes it was prepared with):
    the split kernel, then the combine kernel where there are several splits (with one, the split's
    normalised output is the row's, written in the inputs' dtype)."""
    b, hq, nq, d = setup.shape
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    splits = setup.splits
    o_part = torch.empty((b, hq, nq, splits, d), dtype=torch.float32 if splits > 1 else q.dtype, device=q.device)
    lse_part = torch.empty((b, hq, nq, splits), dtype=torch.float32, device=q.device)
    if _poison():
        o_part.fill_(float("nan"))
        lse_part.fill_(float("nan"))
    kp = setup.key_padding if setup.key_padding is not None else lse_part
    _DECODE(
        (splits, b * setup.key_heads),
        (q, k, v, o_part, lse_part, kp,
         q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
         v.stride(0), v.stride(1), v.stride(2), *o_part.stride()[:4], *lse_part.stride()[:3],
         kp.stride(0) if setup.key_padding is not None else 0,
         setup.key_heads, hq // setup.key_heads, nq, setup.keys, setup.chunk, setup.scale),
        setup.meta, setup.meta_key,
    )
    if splits == 1:  # already normalised, and 0 for rows that see no key
        return o_part[..., 0, :]
    out = torch.empty((b, hq, nq, d), dtype=q.dtype, device=q.device)
    _COMBINE((b * hq * nq,), (o_part, lse_part, out, splits), setup.combine_meta, setup.combine_key)
    return out


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                     key_padding: torch.Tensor | None = None, num_splits: int | None = None) -> torch.Tensor:
    """Attention of a few query tokens (Nq <= 16) against a cache: q [B, Hq, Nq, D], k, v [B, Hkv, Nk, D].
    Query i sees keys j <= Nk - Nq + i where key_padding[b, j] (if given) is True. Forward only;
    rows that see no key return 0."""
    setup = prepare_decode(q, k, v, scale=scale, key_padding=key_padding, num_splits=num_splits)
    if setup is None:
        return torch.zeros_like(q)
    return run_decode(setup, q, k, v)
