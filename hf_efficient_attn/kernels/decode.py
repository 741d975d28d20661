"""Split-key decode attention (flash-decoding) for a few new query tokens against a long cache.

A program owns one key/value head and one contiguous chunk of keys. It packs all query rows of the
head's group (GROUP query heads x Nq tokens) into one tile, so each K/V tile is read once per group,
and runs the online softmax of `flash.py` over its chunk. It writes the chunk's normalised partial
output and its log-sum-exp (base 2); a short combine step then weights the partials by
exp2(lse_s - max_s lse_s). Query token i sees keys j <= Nk - Nq + i that are not padding.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .checks import KernelInputError, _common_reason
from .flash import power_of_2_at_least
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


_DECODE = Relauncher(_decode_split)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                     key_padding: torch.Tensor | None = None, num_splits: int | None = None) -> torch.Tensor:
    """Attention of a few query tokens (Nq <= 16) against a cache: q [B, Hq, Nq, D], k, v [B, Hkv, Nk, D].
    Query i sees keys j <= Nk - Nq + i where key_padding[b, j] (if given) is True. Forward only;
    rows that see no key return 0."""
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
        return torch.zeros_like(q)
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    group = hq // hkv
    block_r = max(16, power_of_2_at_least(group * nq))
    block_n = 16 if INTERPRET else (64 if block_r <= 64 else 32)
    if num_splits is None:
        want = max(1, (2 * _num_sms(q.device)) // max(1, b * hkv))
        num_splits = min(want, triton.cdiv(nk, block_n))
    chunk = triton.cdiv(triton.cdiv(nk, max(1, num_splits)), block_n) * block_n
    splits = triton.cdiv(nk, chunk)
    o_part = torch.empty((b, hq, nq, splits, d), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((b, hq, nq, splits), dtype=torch.float32, device=q.device)
    if os.environ.get("HF_EA_POISON", "0") == "1":
        o_part.fill_(float("nan"))
        lse_part.fill_(float("nan"))
    kp = key_padding.to(torch.int8).contiguous() if key_padding is not None else o_part
    _DECODE(
        (splits, b * hkv),
        (q, k, v, o_part, lse_part, kp,
         q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
         v.stride(0), v.stride(1), v.stride(2), *o_part.stride()[:4], *lse_part.stride()[:3],
         kp.stride(0) if key_padding is not None else 0,
         hkv, group, nq, nk, chunk, float(scale) * 1.4426950408889634),
        dict(HEAD_DIM=d, BLOCK_D=max(16, power_of_2_at_least(d)), BLOCK_R=block_r, BLOCK_N=block_n,
             HAS_KPAD=key_padding is not None, IEEE=q.dtype == torch.float32,
             num_warps=4, num_stages=1 if INTERPRET else 3),
    )
    if splits == 1:  # already normalised, and 0 for rows that see no key
        return o_part[..., 0, :].to(q.dtype)
    return _combine_splits(o_part, lse_part).to(q.dtype)


def _combine_splits(o_part: torch.Tensor, lse_part: torch.Tensor) -> torch.Tensor:
    """The rows' outputs from the splits' normalised partial outputs [..., S, D] and base-2 log-sum-exps
    [..., S]: weights 2^(lse_s - max) over their sum. A row that saw no key has every lse at -inf and gets 0.
    Few, fp32 element-wise operations: this runs once per layer and generated token."""
    top = lse_part.amax(-1, keepdim=True).nan_to_num_(neginf=0.0)
    weights = torch.exp2(lse_part - top)
    total = weights.sum(-1, keepdim=True).clamp_min_(torch.finfo(torch.float32).tiny)  # >= 1 unless the row is empty
    return (o_part * (weights / total)[..., None]).sum(-2)
