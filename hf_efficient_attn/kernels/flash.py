"""Fused masked attention in Triton: forward, and the two backward kernels.

Math
----
For one query row q_i and the keys it may see (the set V_i given by the mask),

    s_ij = scale * q_i . k_j,   p_ij = exp(s_ij - L_i),   L_i = log sum_{j in V_i} exp(s_ij),
    o_i  = sum_j p_ij v_j.

Forward (online softmax). A program owns BLOCK_M query rows and walks over key tiles of BLOCK_N
keys. It keeps, per row, the running maximum m_i, the running sum l_i = sum exp(s_ij - m_i) and an
unnormalised accumulator acc_i = sum exp(s_ij - m_i) v_j, all in fp32. For a new tile with row
maxima m~ it sets m' = max(m_i, m~), rescales l_i and acc_i by alpha = exp(m_i - m'), and adds the
tile's exp(s_ij - m') terms. At the end o_i = acc_i / l_i and L_i = m_i + log l_i is saved for the
backward pass. Exponentials are taken base 2 (scores are pre-multiplied by log2(e)); L is stored in
base 2 as well. A row that sees no key keeps l_i = 0: it writes o_i = 0 and L_i = +inf, so that
every p_ij recomputed in the backward pass is exp2(s - inf) = 0 and the row contributes no gradient.

Backward (FlashAttention-2). With dO the output gradient and delta_i = sum_d dO_id O_id,

    dp_ij = dO_i . v_j,   ds_ij = p_ij (dp_ij - delta_i),
    dV_j = sum_i p_ij dO_i,   dK_j = scale * sum_i ds_ij q_i,   dQ_i = scale * sum_j ds_ij k_j.

`_attn_bwd_dkdv` owns BLOCK_N keys of one key/value head and walks over the query tiles that can see
them, for every query head of its group (GQA), so dK and dV are summed over the group in registers
and written once (no atomics). `_attn_bwd_dq` owns BLOCK_M query rows and walks over key tiles
exactly like the forward pass. p is recomputed from the saved L, never stored. The dQ kernel runs
first: it also computes delta for its rows (one extra load of O per program) and writes it out for the
dK/dV kernel, so a backward pass is two launches with no separate preprocessing kernel.

Which tiles are visited
-----------------------
qpos(i) = i + (Nk - Nq) for causal attention, else i. For dense masks (causal and/or a window band)
the key range of a query tile is computed from the band: [lo, hi) plus the leading keys that hold
sink/global keys, walked first, in tiles of SINK_BLOCK keys (16, the least a tensor-core product takes), so
that 4 sinks cost a 16-key tile, not a BLOCK_N-key one, in every query tile. In the backward those keys
[0, sink_end) have dK/dV programs of their own, SINK_BLOCK keys each, that walk every query tile able to
see them; the key tiles walk only their band and leave those rows to them. Inside it, tiles that are
entirely visible (inside the band, in bounds) are run without the per-element mask (MASKED=False); the
edges are run with it. The backward dK/dV kernel does the same on the transposed band. For block
layouts the host builds, per query tile, compact lists of key tiles (one list of partially visible
tiles, one of fully visible tiles), and their transposes for dK/dV; the kernels walk only those lists
(LIST=True).

Order of programs
-----------------
Grid axis 0 is batch x head, axis 1 the tile. Forward and dQ programs take query tiles from the last:
under causal masking the last tiles see the most keys, and starting the heaviest programs of every
head first keeps the final wave short (longest job first). dK/dV programs take the sink keys' programs
first, then key tiles from the first, their heaviest, for the same reason.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .strides import kernel_ready
from .tuning import TunedKernel, launch_out_of_memory, untuned_when_small

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")

SINK_BLOCK = tl.constexpr(16)
"""Keys per tile over the sink/global keys: in the forward and dQ before a query tile's band, and per
dK/dV sink program."""

BIG = 1 << 30  # stands for "no bound" in window arithmetic; int32-safe after adding a length
_BIG = tl.constexpr(BIG)
# The CPU interpreter multiplies bfloat16 tiles wrongly (raw bits); there, dots run on fp32 copies.
_UPCAST_DOTS = tl.constexpr(INTERPRET)


# --------------------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------------------


def _tuning_enabled() -> bool:
    return os.environ.get("HF_EA_AUTOTUNE", "1") != "0" and not INTERPRET


def _fwd_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    if not _tuning_enabled():
        return [triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3)]
    return [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    ]


def _dq_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    if not _tuning_enabled():
        return [triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2)]
    return [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    ]


def _dkdv_configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    if not _tuning_enabled():
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=8, num_stages=2)]
    return [
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_M": 32, "BLOCK_N": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),  # causal d128 on the H100
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=8, num_stages=3),
    ]


def sparse_tiles(layout_block_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Kernel tiles (BLOCK_M queries, BLOCK_N keys) under a block layout: the forward's, then the
    backward kernels'.

    The backward runs 64 x 64 tiles. The forward takes 128 query rows per program, as its dense launch
    does (on Hopper a 64-row tile leaves half of each warpgroup's matrix instructions idle: a nearly full
    layout ran 1.5x slower than the dense kernel in 64 x 64 tiles), where layout blocks are a multiple of
    128 long, so no tile straddles a block edge and falls to the element-wise mask.
    """
    if INTERPRET:
        return ((32, 16) if layout_block_size % 32 == 0 else (16, 16)), (16, 16)
    return ((128, 64) if layout_block_size % 128 == 0 else (64, 64)), (64, 64)


def _sparse_configs():
    if INTERPRET or not _tuning_enabled():
        return [triton.Config({}, num_warps=4, num_stages=1 if INTERPRET else 3)]
    return [
        triton.Config({}, num_warps=4, num_stages=3),
        triton.Config({}, num_warps=4, num_stages=2),
        triton.Config({}, num_warps=8, num_stages=3),
    ]


_KEY = ["TUNE_NQ", "TUNE_NK", "HEAD_DIM", "CAUSAL", "HAS_WINDOW", "HAS_KPAD", "IS_VARLEN", "IEEE"]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


@triton.jit
def _mma(a, b, acc, IEEE: tl.constexpr):
    if _UPCAST_DOTS:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:  # noqa: SIM108 (constexpr branch)
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _load_rows(base, rows, stride_row, n_rows, CHECK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """Load a [len(rows), BLOCK_D] tile; the head dim is padded with zeros up to BLOCK_D."""
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = base + rows[:, None].to(tl.int64) * stride_row + offs_d[None, :]
    if CHECK_ROWS:
        if BLOCK_D != HEAD_DIM:
            x = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        else:
            x = tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
    else:
        if BLOCK_D != HEAD_DIM:
            x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _store_rows(base, x, rows, stride_row, n_rows, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = base + rows[:, None].to(tl.int64) * stride_row + offs_d[None, :]
    tl.store(ptrs, x, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _store_rows_from(base, x, rows, stride_row, first_row, n_rows, HEAD_DIM: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    """`_store_rows` of the rows from ``first_row`` on (the rows before are another program's)."""
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = base + rows[:, None].to(tl.int64) * stride_row + offs_d[None, :]
    rows_kept = (rows[:, None] >= first_row) & (rows[:, None] < n_rows)
    tl.store(ptrs, x, mask=rows_kept & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _zero_padded_keys(dk, dv, kpad_base, kj, nk):
    """dK and dV with the rows of padded keys set to zero: a padded key is seen by no query."""
    kept = tl.load(kpad_base + kj, mask=kj < nk, other=0) != 0
    return tl.where(kept[:, None], dk, 0.0), tl.where(kept[:, None], dv, 0.0)


@triton.jit
def _sink_keys_end(SINK):
    """The end of the keys walked as sink tiles: the sink/global count rounded up to SINK_BLOCK."""
    return ((SINK + SINK_BLOCK - 1) // SINK_BLOCK) * SINK_BLOCK


@triton.jit
def _visible(qp, kj, nk, WL, WR, SINK, GQ, lay_base, lay_sq, LB, PMAX,
             CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_SPARSE: tl.constexpr):
    """Element-wise mask. qp and kj are broadcastable 2-D index tensors (query position, key index).
    Key padding is applied by the callers (it is a 1-D load)."""
    vis = kj < nk
    if CAUSAL:
        vis = vis & (kj <= qp)
    if HAS_WINDOW:
        band = ((qp - kj) < WL) & ((kj - qp) < WR)
        vis = vis & (band | (kj < SINK) | (qp < GQ))
    if BLOCK_SPARSE:
        qb = tl.minimum(tl.maximum(qp, 0), PMAX) // LB
        kb = tl.minimum(kj, nk - 1) // LB
        vis = vis & (tl.load(lay_base + qb * lay_sq + kb) != 0)
    return vis


@triton.jit
def _tile_visible(qp, offs_n, nk, WL, WR, SINK, GQ, kpad_base, lay_base, lay_sq, LB, PMAX, MASKED: tl.constexpr,
                  CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_KPAD: tl.constexpr,
                  BLOCK_SPARSE: tl.constexpr):
    """Which pairs of a tile of query positions qp and keys offs_n are visible: the element-wise mask on
    edge tiles (MASKED), key padding on any tile. Only for tiles with MASKED or HAS_KPAD set; the result
    broadcasts against [len(qp), len(offs_n)]."""
    if MASKED:
        vis = _visible(qp[:, None], offs_n[None, :], nk, WL, WR, SINK, GQ, lay_base, lay_sq, LB, PMAX,
                       CAUSAL, HAS_WINDOW, BLOCK_SPARSE)
        if HAS_KPAD:
            kp = tl.load(kpad_base + offs_n, mask=offs_n < nk, other=0)
            vis = vis & (kp[None, :] != 0)
    else:
        vis = tl.load(kpad_base + offs_n)[None, :] != 0
    return vis


@triton.jit
def _key_ranges(p0, p1, nk, WL, WR, SINK, GQ, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """Key tiles for query positions [p0, p1]: sinks [0, s_end), then the band [b_lo, hi) whose
    fully visible part is [f_lo, f_hi). s_end is a multiple of SINK_BLOCK, the other bounds multiples of
    BLOCK_N except hi."""
    zero = p0 * 0
    hi = zero + nk
    full_bound = hi
    if CAUSAL:
        hi = tl.minimum(hi, p1 + 1)
        full_bound = tl.minimum(full_bound, p0 + 1)
    lo = zero
    f_lo = zero
    if HAS_WINDOW:
        band = p0 >= GQ  # a tile holding global query rows sees every (causal) key, all masked
        lo = tl.where(band, tl.maximum(p0 - WL + 1, 0), 0)
        hi = tl.where(band, tl.minimum(hi, p1 + WR), hi)
        f_lo = tl.where(band, tl.maximum(p1 - WL + 1, 0), 0)
        full_bound = tl.where(band, tl.minimum(full_bound, p0 + WR), 0)
    hi = tl.maximum(hi, 0)
    b_lo = (lo // BLOCK_N) * BLOCK_N
    s_end = tl.minimum(_sink_keys_end(SINK), b_lo)
    f_lo = tl.maximum(((f_lo + BLOCK_N - 1) // BLOCK_N) * BLOCK_N, b_lo)
    f_hi = (tl.maximum(full_bound, 0) // BLOCK_N) * BLOCK_N
    f_hi = tl.maximum(tl.minimum(f_hi, hi), f_lo)
    return s_end, b_lo, f_lo, f_hi, hi


# --------------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, qp, k_base, v_base, skn, svn, kpad_base, lay_base, lay_sq, LB, PMAX,
               lo, hi, cols, nk, qk_scale, WL, WR, SINK, GQ,
               MASKED: tl.constexpr, LIST: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
               HAS_KPAD: tl.constexpr, BLOCK_SPARSE: tl.constexpr, BLOCK_N: tl.constexpr,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    offs_n0 = tl.arange(0, BLOCK_N)
    step = 1 if LIST else BLOCK_N
    for it in range(lo, hi, step):
        if LIST:  # noqa: SIM108 (constexpr branch)
            start_n = tl.load(cols + it) * BLOCK_N
        else:
            start_n = it
        offs_n = start_n + offs_n0
        k = _load_rows(k_base, offs_n, skn, nk, MASKED, HEAD_DIM, BLOCK_D)
        v = _load_rows(v_base, offs_n, svn, nk, MASKED, HEAD_DIM, BLOCK_D)
        s = _mma(q, tl.trans(k), tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32), IEEE)
        if MASKED or HAS_KPAD:
            vis = _tile_visible(qp, offs_n, nk, WL, WR, SINK, GQ, kpad_base, lay_base, lay_sq, LB, PMAX, MASKED,
                                CAUSAL, HAS_WINDOW, HAS_KPAD, BLOCK_SPARSE)
            s = tl.where(vis, s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_use[:, None])
        else:
            # every key visible: scale the row maxima, not the tile, and fold the scale into the
            # exponent's argument (one fused multiply-add per score; the scale is positive)
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            m_use = m_new
            p = tl.math.exp2(s * qk_scale - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = _mma(p.to(v.dtype), v, acc, IEEE)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(Q, K, V, Out, LSE, KPAD, LAYOUT, RP_P, COLS_P, RP_F, COLS_F, RUN_START, RUN_STOP, CU_Q, CU_K,
              sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, slb, slh, skpb, sly_h, sly_q,
              H, GROUP, NQ, NK, N_MT, qk_scale, WL, WR, SINK, GQ, LB, PMAX, TUNE_NQ, TUNE_NK,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
              HAS_KPAD: tl.constexpr, BLOCK_SPARSE: tl.constexpr, LAYOUT_LOOKUP: tl.constexpr,
              IS_VARLEN: tl.constexpr, IEEE: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)  # the last query tiles, the most work when causal, first
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    if IS_VARLEN:
        q_start = tl.load(CU_Q + b).to(tl.int64)
        nq = (tl.load(CU_Q + b + 1) - tl.load(CU_Q + b)).to(tl.int32)
        k_start = tl.load(CU_K + b).to(tl.int64)
        nk = (tl.load(CU_K + b + 1) - tl.load(CU_K + b)).to(tl.int32)
    else:
        q_start = 0
        k_start = 0
        nq = NQ
        nk = NK
    m0 = pid_m * BLOCK_M
    if m0 < nq:
        b64 = b.to(tl.int64)
        q_base = Q + b64 * sqb + h.to(tl.int64) * sqh + q_start * sqn
        k_base = K + b64 * skb + hk.to(tl.int64) * skh + k_start * skn
        v_base = V + b64 * svb + hk.to(tl.int64) * svh + k_start * svn
        o_base = Out + b64 * sob + h.to(tl.int64) * soh + q_start * son
        lse_base = LSE + b64 * slb + h.to(tl.int64) * slh + q_start
        kpad_base = KPAD + b64 * skpb
        lay_base = LAYOUT + h.to(tl.int64) * sly_h

        off = 0
        if CAUSAL:
            off = nk - nq
        offs_m = m0 + tl.arange(0, BLOCK_M)
        qp = offs_m + off
        p0 = m0 + off
        p1 = tl.minimum(m0 + BLOCK_M, nq) - 1 + off

        q = _load_rows(q_base, offs_m, sqn, nq, True, HEAD_DIM, BLOCK_D)
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

        if BLOCK_SPARSE:
            row = h * N_MT + pid_m
            lo = tl.load(RP_P + row)
            hi = tl.load(RP_P + row + 1)
            acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, qp, k_base, v_base, skn, svn, kpad_base, lay_base,
                                       sly_q, LB, PMAX, lo, hi, COLS_P, nk, qk_scale, WL, WR, SINK, GQ,
                                       True, True, CAUSAL, HAS_WINDOW, HAS_KPAD, LAYOUT_LOOKUP, BLOCK_N,
                                       HEAD_DIM, BLOCK_D, IEEE)
            run_start = tl.load(RUN_START + row) * BLOCK_N
            run_stop = tl.load(RUN_STOP + row) * BLOCK_N
            if run_stop > run_start:  # the fully visible tiles are one run: walk it as a dense key range
                acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, qp, k_base, v_base, skn, svn, kpad_base, lay_base,
                                           sly_q, LB, PMAX, run_start, run_stop, COLS_F, nk, qk_scale, WL, WR,
                                           SINK, GQ, False, False, CAUSAL, HAS_WINDOW, HAS_KPAD, LAYOUT_LOOKUP,
                                           BLOCK_N, HEAD_DIM, BLOCK_D, IEEE)
            else:
                lo = tl.load(RP_F + row)
                hi = tl.load(RP_F + row + 1)
                acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, qp, k_base, v_base, skn, svn, kpad_base, lay_base,
                                           sly_q, LB, PMAX, lo, hi, COLS_F, nk, qk_scale, WL, WR, SINK, GQ,
                                           False, True, CAUSAL, HAS_WINDOW, HAS_KPAD, LAYOUT_LOOKUP, BLOCK_N,
                                           HEAD_DIM, BLOCK_D, IEEE)
        else:
            s_end, b_lo, f_lo, f_hi, hi = _key_ranges(p0, p1, nk, WL, WR, SINK, GQ, CAUSAL, HAS_WINDOW,
                                                      BLOCK_N)
            if HAS_WINDOW:  # the sink tiles first: their loads go out with the queries' instead of after the band
                acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, qp, k_base, v_base, skn, svn, kpad_base,
                                           lay_base, sly_q, LB, PMAX, 0, s_end, COLS_P, nk, qk_scale, WL, WR,
                                           SINK, GQ, True, False, CAUSAL, HAS_WINDOW, HAS_KPAD, False,
                                           SINK_BLOCK, HEAD_DIM, BLOCK_D, IEEE)
            # then the fully visible tiles: they set a good running max for the masked edges
            acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, qp, k_base, v_base, skn, svn, kpad_base, lay_base,
                                       sly_q, LB, PMAX, f_lo, f_hi, COLS_P, nk, qk_scale, WL, WR, SINK, GQ,
                                       False, False, CAUSAL, HAS_WINDOW, HAS_KPAD, False, BLOCK_N,
                                       HEAD_DIM, BLOCK_D, IEEE)
            acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, qp, k_base, v_base, skn, svn, kpad_base, lay_base,
                                       sly_q, LB, PMAX, f_hi, hi, COLS_P, nk, qk_scale, WL, WR, SINK, GQ,
                                       True, False, CAUSAL, HAS_WINDOW, HAS_KPAD, False, BLOCK_N,
                                       HEAD_DIM, BLOCK_D, IEEE)
            acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, qp, k_base, v_base, skn, svn, kpad_base, lay_base,
                                       sly_q, LB, PMAX, b_lo, f_lo, COLS_P, nk, qk_scale, WL, WR, SINK, GQ,
                                       True, False, CAUSAL, HAS_WINDOW, HAS_KPAD, False, BLOCK_N,
                                       HEAD_DIM, BLOCK_D, IEEE)

        empty = l_i == 0.0
        l_safe = tl.where(empty, 1.0, l_i)
        out = acc / l_safe[:, None]
        lse = tl.where(empty, float("inf"), m_i + tl.math.log2(l_safe))
        _store_rows(o_base, out.to(Out.dtype.element_ty), offs_m, son, nq, HEAD_DIM, BLOCK_D)
        tl.store(lse_base + offs_m, lse, mask=offs_m < nq)


# --------------------------------------------------------------------------------------------------
# backward: dQ
# --------------------------------------------------------------------------------------------------


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, qp, k_base, v_base, skn, svn, kpad_base, lay_base, lay_sq, LB, PMAX,
              lo, hi, cols, nk, qk_scale, WL, WR, SINK, GQ,
              MASKED: tl.constexpr, LIST: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
              HAS_KPAD: tl.constexpr, BLOCK_SPARSE: tl.constexpr, BLOCK_N: tl.constexpr,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    offs_n0 = tl.arange(0, BLOCK_N)
    step = 1 if LIST else BLOCK_N
    for it in range(lo, hi, step):
        if LIST:  # noqa: SIM108 (constexpr branch)
            start_n = tl.load(cols + it) * BLOCK_N
        else:
            start_n = it
        offs_n = start_n + offs_n0
        k = _load_rows(k_base, offs_n, skn, nk, MASKED, HEAD_DIM, BLOCK_D)
        v = _load_rows(v_base, offs_n, svn, nk, MASKED, HEAD_DIM, BLOCK_D)
        s = _mma(q, tl.trans(k), tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32), IEEE)
        p = tl.math.exp2(s * qk_scale - lse[:, None])
        if MASKED or HAS_KPAD:
            vis = _tile_visible(qp, offs_n, nk, WL, WR, SINK, GQ, kpad_base, lay_base, lay_sq, LB, PMAX, MASKED,
                                CAUSAL, HAS_WINDOW, HAS_KPAD, BLOCK_SPARSE)
            p = tl.where(vis, p, 0.0)
        dp = _mma(do, tl.trans(v), tl.zeros([q.shape[0], BLOCK_N], dtype=tl.float32), IEEE)
        ds = p * (dp - delta[:, None])
        dq = _mma(ds.to(k.dtype), k, dq, IEEE)
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, Out, DQ, LSE, DELTA, KPAD, LAYOUT, RP_P, COLS_P, RP_F, COLS_F, CU_Q, CU_K,
                 sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, slb, slh, skpb, sly_h, sly_q,
                 H, GROUP, NQ, NK, N_MT, sm_scale, qk_scale, WL, WR, SINK, GQ, LB, PMAX, TUNE_NQ, TUNE_NK,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                 HAS_WINDOW: tl.constexpr, HAS_KPAD: tl.constexpr, BLOCK_SPARSE: tl.constexpr,
                 LAYOUT_LOOKUP: tl.constexpr, IS_VARLEN: tl.constexpr, IEEE: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # DQ shares Q's strides (sqb, sqh, sqn); DO and Out have (sob, soh, son); DELTA shares LSE's.
    pid_bh = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)  # the last query tiles, the most work when causal, first
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    if IS_VARLEN:
        q_start = tl.load(CU_Q + b).to(tl.int64)
        nq = (tl.load(CU_Q + b + 1) - tl.load(CU_Q + b)).to(tl.int32)
        k_start = tl.load(CU_K + b).to(tl.int64)
        nk = (tl.load(CU_K + b + 1) - tl.load(CU_K + b)).to(tl.int32)
    else:
        q_start = 0
        k_start = 0
        nq = NQ
        nk = NK
    m0 = pid_m * BLOCK_M
    if m0 < nq:
        b64 = b.to(tl.int64)
        q_base = Q + b64 * sqb + h.to(tl.int64) * sqh + q_start * sqn
        k_base = K + b64 * skb + hk.to(tl.int64) * skh + k_start * skn
        v_base = V + b64 * svb + hk.to(tl.int64) * svh + k_start * svn
        do_base = DO + b64 * sob + h.to(tl.int64) * soh + q_start * son
        o_base = Out + b64 * sob + h.to(tl.int64) * soh + q_start * son
        dq_base = DQ + b64 * sqb + h.to(tl.int64) * sqh + q_start * sqn
        lse_base = LSE + b64 * slb + h.to(tl.int64) * slh + q_start
        delta_base = DELTA + b64 * slb + h.to(tl.int64) * slh + q_start
        kpad_base = KPAD + b64 * skpb
        lay_base = LAYOUT + h.to(tl.int64) * sly_h

        off = 0
        if CAUSAL:
            off = nk - nq
        offs_m = m0 + tl.arange(0, BLOCK_M)
        qp = offs_m + off
        p0 = m0 + off
        p1 = tl.minimum(m0 + BLOCK_M, nq) - 1 + off

        q = _load_rows(q_base, offs_m, sqn, nq, True, HEAD_DIM, BLOCK_D)
        do = _load_rows(do_base, offs_m, son, nq, True, HEAD_DIM, BLOCK_D)
        lse = tl.load(lse_base + offs_m, mask=offs_m < nq, other=float("inf"))
        # delta_i = dO_i . O_i for this program's rows, kept for the dK/dV kernel that runs next
        o = _load_rows(o_base, offs_m, son, nq, True, HEAD_DIM, BLOCK_D)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(delta_base + offs_m, delta, mask=offs_m < nq)
        dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        if BLOCK_SPARSE:
            row = h * N_MT + pid_m
            lo = tl.load(RP_P + row)
            hi = tl.load(RP_P + row + 1)
            dq = _dq_tiles(dq, q, do, lse, delta, qp, k_base, v_base, skn, svn, kpad_base, lay_base, sly_q,
                           LB, PMAX, lo, hi, COLS_P, nk, qk_scale, WL, WR, SINK, GQ, True, True, CAUSAL,
                           HAS_WINDOW, HAS_KPAD, LAYOUT_LOOKUP, BLOCK_N, HEAD_DIM, BLOCK_D, IEEE)
            lo = tl.load(RP_F + row)
            hi = tl.load(RP_F + row + 1)
            dq = _dq_tiles(dq, q, do, lse, delta, qp, k_base, v_base, skn, svn, kpad_base, lay_base, sly_q,
                           LB, PMAX, lo, hi, COLS_F, nk, qk_scale, WL, WR, SINK, GQ, False, True, CAUSAL,
                           HAS_WINDOW, HAS_KPAD, LAYOUT_LOOKUP, BLOCK_N, HEAD_DIM, BLOCK_D, IEEE)
        else:
            s_end, b_lo, f_lo, f_hi, hi = _key_ranges(p0, p1, nk, WL, WR, SINK, GQ, CAUSAL, HAS_WINDOW,
                                                      BLOCK_N)
            if HAS_WINDOW:  # the sink tiles first, as in the forward
                dq = _dq_tiles(dq, q, do, lse, delta, qp, k_base, v_base, skn, svn, kpad_base, lay_base,
                               sly_q, LB, PMAX, 0, s_end, COLS_P, nk, qk_scale, WL, WR, SINK, GQ, True, False,
                               CAUSAL, HAS_WINDOW, HAS_KPAD, False, SINK_BLOCK, HEAD_DIM, BLOCK_D, IEEE)
            dq = _dq_tiles(dq, q, do, lse, delta, qp, k_base, v_base, skn, svn, kpad_base, lay_base, sly_q,
                           LB, PMAX, f_lo, f_hi, COLS_P, nk, qk_scale, WL, WR, SINK, GQ, False, False, CAUSAL,
                           HAS_WINDOW, HAS_KPAD, False, BLOCK_N, HEAD_DIM, BLOCK_D, IEEE)
            dq = _dq_tiles(dq, q, do, lse, delta, qp, k_base, v_base, skn, svn, kpad_base, lay_base, sly_q,
                           LB, PMAX, f_hi, hi, COLS_P, nk, qk_scale, WL, WR, SINK, GQ, True, False, CAUSAL,
                           HAS_WINDOW, HAS_KPAD, False, BLOCK_N, HEAD_DIM, BLOCK_D, IEEE)
            dq = _dq_tiles(dq, q, do, lse, delta, qp, k_base, v_base, skn, svn, kpad_base, lay_base, sly_q,
                           LB, PMAX, b_lo, f_lo, COLS_P, nk, qk_scale, WL, WR, SINK, GQ, True, False, CAUSAL,
                           HAS_WINDOW, HAS_KPAD, False, BLOCK_N, HEAD_DIM, BLOCK_D, IEEE)
        _store_rows(dq_base, (dq * sm_scale).to(DQ.dtype.element_ty), offs_m, sqn, nq, HEAD_DIM, BLOCK_D)


# --------------------------------------------------------------------------------------------------
# backward: dK, dV
# --------------------------------------------------------------------------------------------------


@triton.jit
def _dkdv_tiles(dk, dv, k, v, kj, q_base, do_base, lse_base, delta_base, sqn, son, lay_base, lay_sq, LB, PMAX,
                lo, hi, cols, off, nq, nk, qk_scale, WL, WR, SINK, GQ,
                MASKED: tl.constexpr, LIST: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                BLOCK_SPARSE: tl.constexpr, BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr,
                BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    offs_m0 = tl.arange(0, BLOCK_M)
    step = 1 if LIST else BLOCK_M
    for it in range(lo, hi, step):
        if LIST:  # noqa: SIM108 (constexpr branch)
            start_m = tl.load(cols + it) * BLOCK_M
        else:
            start_m = it
        offs_m = start_m + offs_m0
        q = _load_rows(q_base, offs_m, sqn, nq, MASKED, HEAD_DIM, BLOCK_D)
        do = _load_rows(do_base, offs_m, son, nq, MASKED, HEAD_DIM, BLOCK_D)
        if MASKED:
            lse = tl.load(lse_base + offs_m, mask=offs_m < nq, other=float("inf"))
            delta = tl.load(delta_base + offs_m, mask=offs_m < nq, other=0.0)
        else:
            lse = tl.load(lse_base + offs_m)
            delta = tl.load(delta_base + offs_m)
        s_t = _mma(k, tl.trans(q), tl.zeros([k.shape[0], BLOCK_M], dtype=tl.float32), IEEE)
        p_t = tl.math.exp2(s_t * qk_scale - lse[None, :])
        if MASKED:
            vis = _visible((offs_m + off)[None, :], kj[:, None], nk, WL, WR, SINK, GQ, lay_base, lay_sq, LB,
                           PMAX, CAUSAL, HAS_WINDOW, BLOCK_SPARSE)
            p_t = tl.where(vis, p_t, 0.0)
        dv = _mma(p_t.to(do.dtype), do, dv, IEEE)
        dp_t = _mma(v, tl.trans(do), tl.zeros([k.shape[0], BLOCK_M], dtype=tl.float32), IEEE)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = _mma(ds_t.to(q.dtype), q, dk, IEEE)
    return dk, dv


@triton.jit
def _query_ranges(n0, n1, off, nq, nk, WL, WR, SINK, GQ, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query tiles (row index i = qpos - off) that see keys [n0, n1]: global rows [g_lo, g_end),
    then the band [b_lo, hi) whose fully visible part is [f_lo, f_hi)."""
    zero = n0 * 0
    plo = zero - _BIG
    phi = zero + _BIG
    f_plo = zero - _BIG
    f_phi = zero + _BIG
    if CAUSAL:
        plo = zero + n0
        f_plo = zero + n0 + BLOCK_N - 1
    c_lo = tl.minimum(tl.maximum(plo - off, 0), nq)
    full_ok = (n0 + BLOCK_N) <= nk
    g_end = zero
    if HAS_WINDOW:
        band = n0 >= SINK  # a tile holding sink keys is seen by every (causal) query, all masked
        plo = tl.where(band, tl.maximum(plo, n0 - WR + 1), plo)
        phi = tl.where(band, n1 + WL, phi)
        f_plo = tl.where(band, tl.maximum(f_plo, n0 + BLOCK_N - WR), f_plo)
        f_phi = tl.where(band, n0 + WL, f_phi)
        g_rows = tl.minimum(tl.maximum(GQ - off, 0), nq)
        g_end = tl.where(band, ((g_rows + BLOCK_M - 1) // BLOCK_M) * BLOCK_M, 0)
        full_ok = full_ok & band
    lo = tl.minimum(tl.maximum(plo - off, 0), nq)
    hi = tl.maximum(tl.minimum(phi - off, nq), 0)
    g_lo = (c_lo // BLOCK_M) * BLOCK_M
    g_end = tl.maximum(g_end, g_lo)
    b_lo = tl.maximum((lo // BLOCK_M) * BLOCK_M, g_end)
    f_lo = tl.minimum(tl.maximum(f_plo - off, 0), nq)
    f_lo = tl.maximum(((f_lo + BLOCK_M - 1) // BLOCK_M) * BLOCK_M, b_lo)
    f_hi = (tl.maximum(tl.minimum(f_phi - off, nq), 0) // BLOCK_M) * BLOCK_M
    f_hi = tl.where(full_ok, f_hi, 0)
    f_hi = tl.maximum(tl.minimum(f_hi, hi), f_lo)
    return g_lo, g_end, b_lo, f_lo, f_hi, hi


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, KPAD, LAYOUT, RP_P, COLS_P, RP_F, COLS_F, CU_Q, CU_K,
                   sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, slb, slh, skpb, sly_h, sly_q,
                   HKV, GROUP, NQ, NK, N_NT, sm_scale, qk_scale, WL, WR, SINK, GQ, LB, PMAX, TUNE_NQ, TUNE_NK,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                   HAS_WINDOW: tl.constexpr, HAS_KPAD: tl.constexpr, BLOCK_SPARSE: tl.constexpr,
                   LAYOUT_LOOKUP: tl.constexpr, IS_VARLEN: tl.constexpr, IEEE: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # DK shares K's strides and DV shares V's strides; DO shares O's strides (sob, soh, son).
    pid_bh = tl.program_id(0)
    pid_n = tl.program_id(1)  # the sink keys' programs, then the first key tiles: the most work first
    b = pid_bh // HKV
    hk = pid_bh % HKV
    if IS_VARLEN:
        q_start = tl.load(CU_Q + b).to(tl.int64)
        nq = (tl.load(CU_Q + b + 1) - tl.load(CU_Q + b)).to(tl.int32)
        k_start = tl.load(CU_K + b).to(tl.int64)
        nk = (tl.load(CU_K + b + 1) - tl.load(CU_K + b)).to(tl.int32)
    else:
        q_start = 0
        k_start = 0
        nq = NQ
        nk = NK
    b64 = b.to(tl.int64)
    k_rows = b64 * skb + hk.to(tl.int64) * skh + k_start * skn  # this sequence's keys, in K and DK
    v_rows = b64 * svb + hk.to(tl.int64) * svh + k_start * svn
    off = 0
    if CAUSAL:
        off = nk - nq
    # Sink programs first (the heaviest: every query that can see a sink key): SINK_BLOCK keys each, over
    # the sink/global keys [0, sink_end) of a dense pattern with a window, walked against every query tile
    # under the full mask, where a BLOCK_N-key tile holding 4 sinks would walk them all at full width.
    sink_end = 0
    if HAS_WINDOW and not BLOCK_SPARSE:  # compiled only into the kernels that may have sinks
        sink_end = _sink_keys_end(SINK)
        s0 = pid_n * SINK_BLOCK
        if (pid_n < sink_end // SINK_BLOCK) & (s0 < nk):
            lo = 0
            if CAUSAL:
                lo = (tl.minimum(tl.maximum(s0 - off, 0), nq) // BLOCK_M) * BLOCK_M
            kj = s0 + tl.arange(0, SINK_BLOCK)
            k = _load_rows(K + k_rows, kj, skn, nk, True, HEAD_DIM, BLOCK_D)
            v = _load_rows(V + v_rows, kj, svn, nk, True, HEAD_DIM, BLOCK_D)
            dk = tl.zeros([SINK_BLOCK, BLOCK_D], dtype=tl.float32)
            dv = tl.zeros([SINK_BLOCK, BLOCK_D], dtype=tl.float32)
            for g in range(0, GROUP):
                h = (hk * GROUP + g).to(tl.int64)
                lse_rows = b64 * slb + h * slh + q_start
                dk, dv = _dkdv_tiles(dk, dv, k, v, kj, Q + b64 * sqb + h * sqh + q_start * sqn,
                                     DO + b64 * sob + h * soh + q_start * son, LSE + lse_rows, DELTA + lse_rows,
                                     sqn, son, LAYOUT + h * sly_h, sly_q, LB, PMAX, lo, nq, COLS_P, off, nq, nk,
                                     qk_scale, WL, WR, SINK, GQ, True, False, CAUSAL, HAS_WINDOW, False, BLOCK_M,
                                     HEAD_DIM, BLOCK_D, IEEE)
            if HAS_KPAD:
                dk, dv = _zero_padded_keys(dk, dv, KPAD + b64 * skpb, kj, nk)
            _store_rows(DK + k_rows, (dk * sm_scale).to(DK.dtype.element_ty), kj, skn, nk, HEAD_DIM, BLOCK_D)
            _store_rows(DV + v_rows, dv.to(DV.dtype.element_ty), kj, svn, nk, HEAD_DIM, BLOCK_D)
    n_sink = sink_end // SINK_BLOCK
    n0 = (pid_n - n_sink) * BLOCK_N
    if (pid_n >= n_sink) & (n0 < nk) & (n0 + BLOCK_N > sink_end):
        kj = n0 + tl.arange(0, BLOCK_N)
        n1 = tl.minimum(n0 + BLOCK_N, nk) - 1
        k = _load_rows(K + k_rows, kj, skn, nk, True, HEAD_DIM, BLOCK_D)
        v = _load_rows(V + v_rows, kj, svn, nk, True, HEAD_DIM, BLOCK_D)
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        if not BLOCK_SPARSE:
            # the sink keys are the sink programs': this tile walks its band (and global rows) only
            g_lo, g_end, b_lo, f_lo, f_hi, hi = _query_ranges(n0, n1, off, nq, nk, WL, WR, 0, GQ, CAUSAL,
                                                              HAS_WINDOW, BLOCK_M, BLOCK_N)
        for g in range(0, GROUP):
            h = hk * GROUP + g
            q_base = Q + b64 * sqb + h.to(tl.int64) * sqh + q_start * sqn
            do_base = DO + b64 * sob + h.to(tl.int64) * soh + q_start * son
            lse_base = LSE + b64 * slb + h.to(tl.int64) * slh + q_start
            delta_base = DELTA + b64 * slb + h.to(tl.int64) * slh + q_start
            lay_base = LAYOUT + h.to(tl.int64) * sly_h
            if BLOCK_SPARSE:
                row = h * N_NT + pid_n
                lo = tl.load(RP_P + row)
                hi = tl.load(RP_P + row + 1)
                dk, dv = _dkdv_tiles(dk, dv, k, v, kj, q_base, do_base, lse_base, delta_base, sqn, son, lay_base,
                                     sly_q, LB, PMAX, lo, hi, COLS_P, off, nq, nk, qk_scale, WL, WR, SINK, GQ,
                                     True, True, CAUSAL, HAS_WINDOW, LAYOUT_LOOKUP, BLOCK_M, HEAD_DIM, BLOCK_D,
                                     IEEE)
                lo = tl.load(RP_F + row)
                hi = tl.load(RP_F + row + 1)
                dk, dv = _dkdv_tiles(dk, dv, k, v, kj, q_base, do_base, lse_base, delta_base, sqn, son, lay_base,
                                     sly_q, LB, PMAX, lo, hi, COLS_F, off, nq, nk, qk_scale, WL, WR, SINK, GQ,
                                     False, True, CAUSAL, HAS_WINDOW, LAYOUT_LOOKUP, BLOCK_M, HEAD_DIM, BLOCK_D,
                                     IEEE)
            else:
                dk, dv = _dkdv_tiles(dk, dv, k, v, kj, q_base, do_base, lse_base, delta_base, sqn, son, lay_base,
                                     sly_q, LB, PMAX, f_lo, f_hi, COLS_P, off, nq, nk, qk_scale, WL, WR, SINK,
                                     GQ, False, False, CAUSAL, HAS_WINDOW, False, BLOCK_M, HEAD_DIM, BLOCK_D,
                                     IEEE)
                dk, dv = _dkdv_tiles(dk, dv, k, v, kj, q_base, do_base, lse_base, delta_base, sqn, son, lay_base,
                                     sly_q, LB, PMAX, b_lo, f_lo, COLS_P, off, nq, nk, qk_scale, WL, WR, SINK,
                                     GQ, True, False, CAUSAL, HAS_WINDOW, False, BLOCK_M, HEAD_DIM, BLOCK_D,
                                     IEEE)
                dk, dv = _dkdv_tiles(dk, dv, k, v, kj, q_base, do_base, lse_base, delta_base, sqn, son, lay_base,
                                     sly_q, LB, PMAX, f_hi, hi, COLS_P, off, nq, nk, qk_scale, WL, WR, SINK,
                                     GQ, True, False, CAUSAL, HAS_WINDOW, False, BLOCK_M, HEAD_DIM, BLOCK_D,
                                     IEEE)
                if HAS_WINDOW:
                    dk, dv = _dkdv_tiles(dk, dv, k, v, kj, q_base, do_base, lse_base, delta_base, sqn, son,
                                         lay_base, sly_q, LB, PMAX, g_lo, g_end, COLS_P, off, nq, nk, qk_scale, WL,
                                         WR, SINK, GQ, True, False, CAUSAL, HAS_WINDOW, False, BLOCK_M, HEAD_DIM,
                                         BLOCK_D, IEEE)
        if HAS_KPAD:
            dk, dv = _zero_padded_keys(dk, dv, KPAD + b64 * skpb, kj, nk)
        _store_rows_from(DK + k_rows, (dk * sm_scale).to(DK.dtype.element_ty), kj, skn, sink_end, nk, HEAD_DIM,
                         BLOCK_D)
        _store_rows_from(DV + v_rows, dv.to(DV.dtype.element_ty), kj, svn, sink_end, nk, HEAD_DIM, BLOCK_D)


# --------------------------------------------------------------------------------------------------
# tuned entry points and launch wrappers
# --------------------------------------------------------------------------------------------------


def _tuned(kernel, configs: list) -> TunedKernel:
    return TunedKernel(kernel, configs, _KEY, prune=untuned_when_small)


_fwd_dense = _tuned(_attn_fwd, _fwd_configs())
_fwd_sparse = _tuned(_attn_fwd, _sparse_configs())
_dq_dense = _tuned(_attn_bwd_dq, _dq_configs())
_dq_sparse = _tuned(_attn_bwd_dq, _sparse_configs())
_dkdv_dense = _tuned(_attn_bwd_dkdv, _dkdv_configs())
_dkdv_sparse = _tuned(_attn_bwd_dkdv, _sparse_configs())


def _poison() -> bool:
    return os.environ.get("HF_EA_POISON", "0") == "1"


def _empty(shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    dtype = dtype or like.dtype
    if _poison():
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


_DUMMIES: dict[torch.device, torch.Tensor] = {}


def _dummy(device) -> torch.Tensor:
    """A one-element int32 tensor standing for an absent optional input (never read by the kernels); one per
    device, made once, so a call allocates and fills nothing for it."""
    device = torch.device(device)
    if device not in _DUMMIES:
        _DUMMIES[device] = torch.zeros(1, dtype=torch.int32, device=device)
    return _DUMMIES[device]


def power_of_2_at_least(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): triton.next_power_of_2 in plain Python, which a
    launch calls several times and Triton's own wrapper makes costly on the host."""
    return 1 << max(0, int(n) - 1).bit_length()


class MaskArgs:
    """Mask parameters in kernel form (no None), plus the optional tensors."""

    def __init__(self, *, causal, window, sink_tokens, global_tokens, key_padding=None, layout=None,
                 layout_block_size=64, tiles=None, backward_tiles=None, cu_q=None, cu_k=None):
        left, right = window
        self.causal = bool(causal)
        self.has_window = not (left is None and right is None)
        self.wl = BIG if left is None else int(left)
        self.wr = BIG if right is None else int(right)
        self.sink = max(int(sink_tokens), int(global_tokens)) if self.has_window else 0
        self.gq = int(global_tokens) if self.has_window else 0
        self.key_padding = key_padding  # int8 [B, Nk] or None
        self.layout = layout  # int8 [Hl, nQB, nKB] or None
        self.lb = int(layout_block_size)
        self.tiles = tiles  # TileLists of the forward's tiles, or None
        self.backward_tiles = backward_tiles  # () -> TileLists of the backward's tiles (built when first asked)
        self.cu_q = cu_q
        self.cu_k = cu_k


def _list_head_stride(mask: MaskArgs, tiles, attr: str) -> int:
    """Rows per head in the tile lists ``tiles``; 0 without lists or when one layout serves all heads."""
    if tiles is None or mask.layout.shape[0] == 1:
        return 0
    return getattr(tiles, attr)


def layout_lookup(mask: MaskArgs, block_m: int, block_n: int, nq: int, nk: int, varlen: bool) -> bool:
    """Whether the block-layout kernels must read the layout per element in their masked tiles.

    Not where every kernel tile lies inside one layout block (tile sides dividing the layout block, query
    tiles starting on a block edge: a causal call's query offset ``nk - nq`` a multiple of the query tile):
    a listed tile then has its one layout block active, and only causality, the window and the bounds mask
    it. Packed documents (offsets per document) always read it."""
    if mask.layout is None:
        return False
    offset = nk - nq if mask.causal else 0
    inside = mask.lb % block_m == 0 and mask.lb % block_n == 0 and offset >= 0 and offset % block_m == 0
    return varlen or not inside


def _tuning_bucket(length: int) -> int:
    """Lengths share autotuned configs within a power of two, so a new length does not re-tune."""
    return max(64, power_of_2_at_least(max(1, length)))


def _common(q, k, v, mask: MaskArgs, varlen: bool):
    """Strides and scalar arguments shared by the three kernels."""
    dev = q.device
    dummy = _dummy(dev)
    if varlen:  # q [T, H, D]
        sq = (0, q.stride(1), q.stride(0))
        sk = (0, k.stride(1), k.stride(0))
        sv = (0, v.stride(1), v.stride(0))
    else:
        sq = (q.stride(0), q.stride(1), q.stride(2))
        sk = (k.stride(0), k.stride(1), k.stride(2))
        sv = (v.stride(0), v.stride(1), v.stride(2))
    kpad = mask.key_padding if mask.key_padding is not None else dummy
    skpb = mask.key_padding.stride(0) if mask.key_padding is not None else 0
    if mask.layout is not None:
        lay = mask.layout
        sly_h = lay.stride(0) if lay.shape[0] > 1 else 0
        sly_q = lay.stride(1)
        pmax = lay.shape[1] * mask.lb - 1
    else:
        lay, sly_h, sly_q, pmax = dummy, 0, 0, 0
    cu_q = mask.cu_q if mask.cu_q is not None else dummy
    cu_k = mask.cu_k if mask.cu_k is not None else dummy
    return dict(sq=sq, sk=sk, sv=sv, kpad=kpad, skpb=skpb, lay=lay, sly_h=sly_h, sly_q=sly_q, pmax=pmax,
                cu_q=cu_q, cu_k=cu_k, dummy=dummy)


def attention_forward(q, k, v, scale: float, mask: MaskArgs, varlen: bool = False, max_q: int = 0,
                      max_k: int = 0):
    """Launch the forward kernel. Dense: q [B, Hq, Nq, D]; varlen: q [T, Hq, D] with cu_seqlens.
    Returns (o, lse) with lse fp32 in base 2, [B, Hq, Nq] (dense) or [Hq, T] (varlen)."""
    o, lse, kernel, grid, args, meta = _forward_call(q, k, v, scale, mask, varlen, max_q, max_k)
    kernel.launch(grid, args, meta, q.dtype)
    return o, lse


FORWARD_VARYING = (0, 1, 2, 3, 4)
"""Positions of q, k, v, o and lse in the forward kernel's arguments: what changes between the layers of
a forward that share shapes and mask (`ForwardRelaunch`)."""


class ForwardRelaunch:
    """The dense forward under one mask for the calls of one set of shapes and dtypes (`ops.DenseLaunch`:
    the eager layers of a forward, which make the same call on new tensors). A call launches as
    `attention_forward` does and binds that launch (`relaunch.BoundLaunch`), from the first call that
    Triton did not tune. A later call whose tensors have the bound strides (so they are `kernel_ready`
    too: that reads shapes and strides alone) allocates o and lse and relaunches the compiled kernel with
    them (`relaunch`), instead of building the ~45 kernel arguments and their keys again. Outputs o only."""

    BIND_ATTEMPTS = 3
    """Calls that try to bind their launch. The first call of a new key goes through Triton's autotuner,
    which leaves nothing to bind; the next one is relaunched and can be bound."""

    def __init__(self, scale: float, mask: MaskArgs):
        self.scale = scale
        self.mask = mask
        self.strides: tuple | None = None
        self.bound = None
        self.attempts = 0

    def relaunch(self, q, k, v) -> torch.Tensor | None:
        """o for q, k, v as they come (not yet `kernel_ready`), or None where the bound launch does not
        apply: not bound, other strides, or a tensor of another class (`BoundLaunch`)."""
        if self.bound is None or (q.stride(), k.stride(), v.stride()) != self.strides:
            return None
        o, lse = _dense_outputs(q)
        try:
            launched = self.bound((q, k, v, o, lse))
        except RuntimeError as error:
            if not launch_out_of_memory(error):
                raise
            torch.cuda.empty_cache()  # then the usual launch, which retries once more
            return None
        return o if launched else None

    def __call__(self, q, k, v) -> torch.Tensor:
        """o for `kernel_ready` q, k, v, launched the usual way (and bound, while not yet bound)."""
        o, lse, kernel, grid, args, meta = _forward_call(q, k, v, self.scale, self.mask, False, q.shape[2], k.shape[2])
        kernel.launch(grid, args, meta, q.dtype)
        if self.bound is None and self.attempts < self.BIND_ATTEMPTS:
            self.attempts += 1
            self.bound = kernel.bind(grid, args, meta, q.dtype, FORWARD_VARYING)
            self.strides = (q.stride(), k.stride(), v.stride())
        return o


def _forward_call(q, k, v, scale: float, mask: MaskArgs, varlen: bool, max_q: int, max_k: int):
    """The forward's output buffers and launch: (o, lse, tuned kernel, grid, args, meta)."""
    c = _common(q, k, v, mask, varlen)
    if varlen:
        n_batch = mask.cu_q.numel() - 1
        total, hq, d = q.shape
        hkv = k.shape[1]
        nq, nk = max_q, max_k
        o = _empty(q.shape, q)
        lse = _empty((hq, total), q, torch.float32)
        so = (0, o.stride(1), o.stride(0))
        slb, slh = 0, lse.stride(0)
    else:
        n_batch, hq, nq, d = q.shape
        hkv, nk = k.shape[1], k.shape[2]
        o, lse = _dense_outputs(q)
        so = (o.stride(0), o.stride(1), o.stride(2))
        slb, slh = lse.stride(0), lse.stride(1)
    block_d = max(16, power_of_2_at_least(d))
    sparse = mask.tiles is not None
    t = mask.tiles
    qk_scale = float(scale) * 1.4426950408889634
    args = (q, k, v, o, lse, c["kpad"], c["lay"],
            t.fwd_rp_partial if sparse else c["dummy"], t.fwd_cols_partial if sparse else c["dummy"],
            t.fwd_rp_full if sparse else c["dummy"], t.fwd_cols_full if sparse else c["dummy"],
            t.fwd_run_start if sparse else c["dummy"], t.fwd_run_stop if sparse else c["dummy"],
            c["cu_q"], c["cu_k"], *c["sq"], *c["sk"], *c["sv"], *so, slb, slh, c["skpb"], c["sly_h"],
            c["sly_q"], hq, hq // hkv, nq, nk, _list_head_stride(mask, t, "n_mt"), qk_scale, mask.wl, mask.wr, mask.sink,
            mask.gq, mask.lb, c["pmax"])
    meta = dict(HEAD_DIM=d, BLOCK_D=block_d, CAUSAL=mask.causal, HAS_WINDOW=mask.has_window,
                HAS_KPAD=mask.key_padding is not None, BLOCK_SPARSE=sparse, LAYOUT_LOOKUP=False, IS_VARLEN=varlen,
                IEEE=q.dtype == torch.float32, TUNE_NQ=_tuning_bucket(nq), TUNE_NK=_tuning_bucket(nk))
    if sparse:
        tiles = dict(meta, BLOCK_M=t.block_m, BLOCK_N=t.block_n,
                     LAYOUT_LOOKUP=layout_lookup(mask, t.block_m, t.block_n, nq, nk, varlen))
        return o, lse, _fwd_sparse, (n_batch * hq, t.n_mt), args, tiles
    return o, lse, _fwd_dense, lambda m: (n_batch * hq, triton.cdiv(nq, m["BLOCK_M"])), args, meta


def attention_backward(do, q, k, v, o, lse, scale: float, mask: MaskArgs, varlen: bool = False,
                       max_q: int = 0, max_k: int = 0):
    """Launch the backward kernels; returns (dq, dk, dv) in the dtypes of q, k, v."""
    c = _common(q, k, v, mask, varlen)
    if tuple(do.stride()) != tuple(o.stride()) or not (kernel_ready(do) and kernel_ready(o)):
        do, o = do.contiguous(), o.contiguous()  # the kernels read both through one set of strides
    delta = _empty(lse.shape, lse)  # written by the dQ kernel, in the layout of lse
    if varlen:
        n_batch = mask.cu_q.numel() - 1
        hq, d, hkv = q.shape[1], q.shape[2], k.shape[1]
        nq, nk = max_q, max_k
        so = (0, do.stride(1), do.stride(0))
        slb, slh = 0, lse.stride(0)
    else:
        n_batch, hq, nq, d = q.shape
        hkv, nk = k.shape[1], k.shape[2]
        so = (do.stride(0), do.stride(1), do.stride(2))
        slb, slh = lse.stride(0), lse.stride(1)
    dq, dk, dv = _empty_like(q), _empty_like(k), _empty_like(v)
    block_d = max(16, power_of_2_at_least(d))
    sparse = mask.tiles is not None
    t = mask.backward_tiles() if sparse else None
    qk_scale = float(scale) * 1.4426950408889634
    meta = dict(HEAD_DIM=d, BLOCK_D=block_d, CAUSAL=mask.causal, HAS_WINDOW=mask.has_window,
                HAS_KPAD=mask.key_padding is not None, BLOCK_SPARSE=sparse, LAYOUT_LOOKUP=False, IS_VARLEN=varlen,
                IEEE=q.dtype == torch.float32, TUNE_NQ=_tuning_bucket(nq), TUNE_NK=_tuning_bucket(nk))
    common = (c["cu_q"], c["cu_k"], *c["sq"], *c["sk"], *c["sv"], *so, slb, slh, c["skpb"], c["sly_h"],
              c["sly_q"])
    dq_args = (q, k, v, do, o, dq, lse, delta, c["kpad"], c["lay"],
               t.fwd_rp_partial if sparse else c["dummy"], t.fwd_cols_partial if sparse else c["dummy"],
               t.fwd_rp_full if sparse else c["dummy"], t.fwd_cols_full if sparse else c["dummy"],
               *common, hq, hq // hkv, nq, nk, _list_head_stride(mask, t, "n_mt"), float(scale), qk_scale, mask.wl,
               mask.wr, mask.sink, mask.gq, mask.lb, c["pmax"])
    kv_args = (q, k, v, do, dk, dv, lse, delta, c["kpad"], c["lay"],
               t.bwd_rp_partial if sparse else c["dummy"], t.bwd_cols_partial if sparse else c["dummy"],
               t.bwd_rp_full if sparse else c["dummy"], t.bwd_cols_full if sparse else c["dummy"],
               *common, hkv, hq // hkv, nq, nk, _list_head_stride(mask, t, "n_nt"), float(scale), qk_scale, mask.wl,
               mask.wr, mask.sink, mask.gq, mask.lb, c["pmax"])
    # dQ first: its kernel also writes delta, which the dK/dV kernel reads
    if sparse:
        tiles = dict(meta, BLOCK_M=t.block_m, BLOCK_N=t.block_n,
                     LAYOUT_LOOKUP=layout_lookup(mask, t.block_m, t.block_n, nq, nk, varlen))
        _dq_sparse.launch((n_batch * hq, t.n_mt), dq_args, tiles, q.dtype)
        _dkdv_sparse.launch((n_batch * hkv, t.n_nt), kv_args, tiles, q.dtype)
    else:
        _dq_dense.launch(lambda m: (n_batch * hq, triton.cdiv(nq, m["BLOCK_M"])), dq_args, meta, q.dtype)
        sink_programs = triton.cdiv(mask.sink, SINK_BLOCK.value) if mask.has_window else 0
        _dkdv_dense.launch(lambda m: (n_batch * hkv, sink_programs + triton.cdiv(nk, m["BLOCK_N"])), kv_args, meta,
                           q.dtype)
    return dq, dk, dv


def _dense_outputs(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense forward's o, in the query's layout (`strides`: transformers' transpose after attention is
    then free), and its float32 log-sum-exp [B, Hq, Nq]; NaN-filled when poisoning is on (read once)."""
    o = torch.empty_like(q)
    assert o.stride() == q.stride()
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    if _poison():
        o.fill_(float("nan"))
        lse.fill_(float("nan"))
    return o, lse


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    """Like x, strides included (callers pass dense tensors); NaN-filled when poisoning is on."""
    out = torch.empty_like(x)
    assert out.stride() == x.stride()
    if _poison():
        out.fill_(float("nan"))
    return out
