"""Fused 2-D neighbourhood attention in Triton (vision transformers): forward, and the two backward kernels.

Pattern
-------
A sequence of N = P + R*C tokens: P leading tokens that are not on the patch grid (ViT's CLS), then an
R x C grid of patches in raster order, token P + r*C + c being cell (r, c). Query i sees key j iff

* i < G (a global query sees every key), or
* j < L (a leading key is seen by every query), or
* both are cells and |r_i - r_j| <= reach and |c_i - c_j| <= reach (clipped at the grid's border).

L >= P and G >= P, so the tokens before the grid are always leading and global. Tokens i < L that are
cells are leading keys and cells at once: the neighbour walks below skip keys j < L (the leading walk
covers them), and skip queries i < G (the global programs own them), so that no pair is counted twice.

Math
----
As in `flash`: s_ij = scale * q_i . k_j, online softmax over the visible keys with fp32 running maxima,
sums and accumulators, base-2 exponentials (scores pre-multiplied by log2 e), L_i = m_i + log2 l_i saved for
the backward pass; a row that sees no key writes 0 and L_i = +inf. Backward is FlashAttention-2's:
delta_i = dO_i . O_i, ds_ij = p_ij (dO_i . v_j - delta_i), dV_j = sum_i p_ij dO_i, dK_j = scale sum_i ds_ij q_i,
dQ_i = scale sum_j ds_ij k_j, with p recomputed from L. The dQ kernel runs first and writes delta for the
dK/dV kernel (two launches, no preprocessing kernel).

Which tiles are visited
-----------------------
A 2-D tile is a TR x TC rectangle of cells, its TR*TC rows of q (or k) gathered row by row (each token's
head vector is contiguous, so a tile row of TC cells is TC*D contiguous elements).

* Forward and dQ: a program owns a TQR x TQC query tile on the fixed tiling of the grid. It walks (a) the
  leading keys [0, L) as 1-D tiles of BLOCK_L keys, then (b) the TKR x TKC key tiles that cover the query
  tile's rectangle grown by ``reach`` (clipped to the grid). Those key tiles are laid from the grown
  rectangle's corner, not on a fixed tiling (loads are gathered anyway), so no tile is spent on the few
  rows of a neighbouring fixed tile that the rectangle just reaches. Each pair is masked element-wise
  (in the rectangle, key >= L, within reach). Programs for the G global query rows come first on grid
  axis 1 (they are the longest): 1-D tiles of BLOCK_G rows that walk every key densely; axis 1 is
  ceil(G / BLOCK_G) + the number of query tiles.
* dK/dV: a program owns a TKR x TKC key tile on the fixed tiling and walks, for every query head of its
  GQA group (sums in registers, no atomics), the global query rows [0, G) as 1-D tiles, then the TQR x TQC
  query tiles covering its rectangle grown by ``reach``, masked (query >= G, within reach). Programs for
  the leading keys [0, L) come first: 1-D tiles of BLOCK_L keys that walk every query densely. Each key
  row is written by one program (a 2-D program skips its keys < L).

Work saved. For an 8x8 query tile and 8x8 key tiles (BLOCK 64) in the grid's interior, reach r, the grown
rectangle is (8 + 2r)^2 cells, covered by ceil((8 + 2r) / 8)^2 key tiles; each query needs (2r + 1)^2 keys,
dense attention N:

    reach r   key tiles   keys visited   keys needed   visited / needed
    1         4           256            9             28
    2         4           256            25            10
    4         4           256            81            3.2
    8         9           576            289           2.0
    16        25          1600           1089          1.5

plus one leading tile (BLOCK_L = 16 for a CLS token) per query tile. The 1024 px ViT-B/16 grid (64 x 64,
N = 4097) at reach 4 thus computes 272 scores per query instead of 4097 (15x less than dense attention);
at 2048 px (128 x 128, N = 16385) 60x less. The union of a tile's neighbourhoods bounds the saving: no tile of
64 queries needs fewer than (8 + 2r)^2 keys, 3.2x the needed pairs at reach 4 and 2.0x at reach 8; smaller
query tiles need fewer (a 4 x 8 tile at reach 4: 12 x 16 cells, three 4 x 16 key tiles) but reuse each
loaded key less. The autotuner picks among such shapes.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .flash import INTERPRET, _empty, _empty_like, _load_rows, _mma, _store_rows, power_of_2_at_least
from .tuning import UNTUNED_WORK, TunedKernel

# --------------------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------------------


def _tuning_enabled() -> bool:
    return os.environ.get("HF_EA_AUTOTUNE", "1") != "0" and not INTERPRET


def _config(tqr: int, tqc: int, tkr: int, tkc: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"TQR": tqr, "TQC": tqc, "TKR": tkr, "TKC": tkc}, num_warps=warps, num_stages=stages)


def _fwd_configs() -> list:
    """Query tile TQR x TQC and key tile TKR x TKC (cells), for the forward and dQ kernels."""
    if INTERPRET:
        return [_config(4, 4, 4, 4, 4, 1)]
    first = _config(8, 8, 8, 8, 4, 3)
    if not _tuning_enabled():
        return [first]
    return [
        first,
        _config(8, 8, 4, 16, 4, 3),
        _config(8, 8, 8, 8, 4, 2),
        _config(8, 16, 8, 8, 8, 3),
        _config(8, 16, 4, 16, 8, 3),
        _config(4, 8, 4, 16, 4, 3),  # 32 queries: at reach 4 three key tiles of 64 cover their 12 x 16 cells
    ]


def _dkdv_configs() -> list:
    """Key tile TKR x TKC (owned by the program) and query tile TQR x TQC, for the dK/dV kernel."""
    if INTERPRET:
        return [_config(4, 4, 4, 4, 4, 1)]
    first = _config(8, 8, 8, 8, 4, 3)
    if not _tuning_enabled():
        return [first]
    return [
        first,
        _config(8, 8, 8, 16, 8, 2),
        _config(4, 16, 8, 8, 4, 3),
        _config(8, 8, 8, 8, 4, 2),
        _config(8, 8, 8, 16, 8, 3),
    ]


def _line_block(count: int) -> int:
    """Rows of a 1-D tile over the G global queries or the L leading keys: few tokens (a CLS) get a
    small tile rather than 63 masked rows."""
    return min(16 if INTERPRET else 64, max(16, power_of_2_at_least(count)))


def _small_untuned(configs: list, named_args: dict, **kwargs) -> list:
    """Autotuner pruning hook: the first configuration alone for small calls (tuning costs seconds)."""
    args = {**named_args, **kwargs}
    return configs if args["TUNE_N"] * args["TUNE_N"] > UNTUNED_WORK else configs[:1]


_KEY = ["TUNE_N", "REACH", "HEAD_DIM", "IEEE"]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


@triton.jit
def _tile_cells(r0, c0, TR: tl.constexpr, TC: tl.constexpr):
    """Rows and columns of the TR x TC cells of the tile whose corner is (r0, c0), in raster order."""
    offs = tl.arange(0, TR * TC)
    return r0 + offs // TC, c0 + offs % TC


@triton.jit
def _near(qr, qc, kr, kc, REACH):
    """[len(q), len(k)]: within ``REACH`` rows and columns."""
    return (tl.abs(qr[:, None] - kr[None, :]) <= REACH) & (tl.abs(qc[:, None] - kc[None, :]) <= REACH)


@triton.jit
def _softmax_step(acc, l_i, m_i, s, vis, v, qk_scale, IEEE: tl.constexpr):
    """Fold one tile of scores s (unscaled, visible where ``vis``) and its values into the running row
    maxima m_i, sums l_i and accumulators acc (as `flash._fwd_tiles` on a masked tile)."""
    s = tl.where(vis, s * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = _mma(p.to(v.dtype), v, acc, IEEE)
    return acc, l_i, m_new


@triton.jit
def _span(lo, hi, REACH, LIMIT):
    """Cells [lo - REACH, hi + REACH] clipped to [0, LIMIT - 1]: first and last."""
    return tl.maximum(lo - REACH, 0), tl.minimum(hi + REACH, LIMIT - 1)


# --------------------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------------------


@triton.jit
def _fwd_line(acc, l_i, m_i, q, k_base, v_base, skn, svn, hi, qk_scale, BLOCK: tl.constexpr,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    """Keys [0, hi) in 1-D tiles of BLOCK, all visible."""
    offs = tl.arange(0, BLOCK)
    for start in range(0, hi, BLOCK):
        kj = start + offs
        k = _load_rows(k_base, kj, skn, hi, True, HEAD_DIM, BLOCK_D)
        v = _load_rows(v_base, kj, svn, hi, True, HEAD_DIM, BLOCK_D)
        s = _mma(q, tl.trans(k), tl.zeros([q.shape[0], BLOCK], dtype=tl.float32), IEEE)
        acc, l_i, m_i = _softmax_step(acc, l_i, m_i, s, (kj < hi)[None, :], v, qk_scale, IEEE)
    return acc, l_i, m_i


@triton.jit
def _fwd_grid(acc, l_i, m_i, q, qr, qc, k_base, v_base, skn, svn, N, P, C, REACH, LEAD, r_lo, r_hi, c_lo, c_hi,
              qk_scale, TKR: tl.constexpr, TKC: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
              IEEE: tl.constexpr):
    """The TKR x TKC key tiles laid from (r_lo, c_lo) over the rectangle [r_lo, r_hi] x [c_lo, c_hi]."""
    n_c = tl.cdiv(c_hi - c_lo + 1, TKC)
    n_t = tl.cdiv(r_hi - r_lo + 1, TKR) * n_c
    for t in range(0, n_t):
        kr, kc = _tile_cells(r_lo + (t // n_c) * TKR, c_lo + (t % n_c) * TKC, TKR, TKC)
        inside = (kr <= r_hi) & (kc <= c_hi)
        kj = P + kr * C + kc
        rows = tl.where(inside, kj, N)
        k = _load_rows(k_base, rows, skn, N, True, HEAD_DIM, BLOCK_D)
        v = _load_rows(v_base, rows, svn, N, True, HEAD_DIM, BLOCK_D)
        s = _mma(q, tl.trans(k), tl.zeros([q.shape[0], TKR * TKC], dtype=tl.float32), IEEE)
        vis = _near(qr, qc, kr, kc, REACH) & (inside & (kj >= LEAD))[None, :]
        acc, l_i, m_i = _softmax_step(acc, l_i, m_i, s, vis, v, qk_scale, IEEE)
    return acc, l_i, m_i


@triton.jit
def _fwd_finish(acc, l_i, m_i, o_base, lse_base, rows, son, N, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(l_safe))
    _store_rows(o_base, out.to(o_base.dtype.element_ty), rows, son, N, HEAD_DIM, BLOCK_D)
    tl.store(lse_base + rows, lse, mask=rows < N)


@triton.jit
def _fwd_global(pid, q_base, k_base, v_base, o_base, lse_base, sqn, skn, svn, son, N, GQ, qk_scale,
                BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                IEEE: tl.constexpr):
    """Global query rows [pid * BLOCK_G, ...) below GQ: every key."""
    rows = pid * BLOCK_G + tl.arange(0, BLOCK_G)
    rows = tl.where(rows < GQ, rows, N)
    q = _load_rows(q_base, rows, sqn, N, True, HEAD_DIM, BLOCK_D)
    m_i = tl.zeros([BLOCK_G], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    acc, l_i, m_i = _fwd_line(acc, l_i, m_i, q, k_base, v_base, skn, svn, N, qk_scale, BLOCK_N, HEAD_DIM, BLOCK_D,
                              IEEE)
    _fwd_finish(acc, l_i, m_i, o_base, lse_base, rows, son, N, HEAD_DIM, BLOCK_D)


@triton.jit
def _fwd_tile(t, q_base, k_base, v_base, o_base, lse_base, sqn, skn, svn, son, N, P, R, C, REACH, LEAD, GQ, qk_scale,
              BLOCK_L: tl.constexpr, TQR: tl.constexpr, TQC: tl.constexpr, TKR: tl.constexpr, TKC: tl.constexpr,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    """Query tile t of the grid's fixed tiling: the leading keys, then the key tiles within reach."""
    n_tc = tl.cdiv(C, TQC)
    r0 = (t // n_tc) * TQR
    c0 = (t % n_tc) * TQC
    qr, qc = _tile_cells(r0, c0, TQR, TQC)
    qi = P + qr * C + qc
    rows = tl.where((qr < R) & (qc < C) & (qi >= GQ), qi, N)  # global rows belong to `_fwd_global`
    q = _load_rows(q_base, rows, sqn, N, True, HEAD_DIM, BLOCK_D)
    m_i = tl.zeros([TQR * TQC], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([TQR * TQC], dtype=tl.float32)
    acc = tl.zeros([TQR * TQC, BLOCK_D], dtype=tl.float32)
    acc, l_i, m_i = _fwd_line(acc, l_i, m_i, q, k_base, v_base, skn, svn, LEAD, qk_scale, BLOCK_L, HEAD_DIM,
                              BLOCK_D, IEEE)
    r_lo, r_hi = _span(r0, tl.minimum(r0 + TQR, R) - 1, REACH, R)
    c_lo, c_hi = _span(c0, tl.minimum(c0 + TQC, C) - 1, REACH, C)
    acc, l_i, m_i = _fwd_grid(acc, l_i, m_i, q, qr, qc, k_base, v_base, skn, svn, N, P, C, REACH, LEAD, r_lo, r_hi,
                              c_lo, c_hi, qk_scale, TKR, TKC, HEAD_DIM, BLOCK_D, IEEE)
    _fwd_finish(acc, l_i, m_i, o_base, lse_base, rows, son, N, HEAD_DIM, BLOCK_D)


@triton.jit
def _query_head(H, GROUP):
    """The batch row, query head and its key/value head of this program (grid axis 0), as int64 offsets."""
    pid_bh = tl.program_id(0)
    h = pid_bh % H
    return (pid_bh // H).to(tl.int64), h.to(tl.int64), (h // GROUP).to(tl.int64)


@triton.jit
def _nbhd_fwd(Q, K, V, Out, LSE, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son, slb, slh,
              H, GROUP, N, P, R, C, REACH, LEAD, GQ, qk_scale, TUNE_N,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr, BLOCK_G: tl.constexpr,
              BLOCK_L: tl.constexpr, TQR: tl.constexpr, TQC: tl.constexpr, TKR: tl.constexpr,
              TKC: tl.constexpr):
    b, h, hk = _query_head(H, GROUP)
    pid = tl.program_id(1)
    q_base = Q + b * sqb + h * sqh
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    o_base = Out + b * sob + h * soh
    lse_base = LSE + b * slb + h * slh
    n_global = tl.cdiv(GQ, BLOCK_G)
    if pid < n_global:  # the longest programs first
        _fwd_global(pid, q_base, k_base, v_base, o_base, lse_base, sqn, skn, svn, son, N, GQ, qk_scale, BLOCK_G,
                    TKR * TKC, HEAD_DIM, BLOCK_D, IEEE)
    else:
        _fwd_tile(pid - n_global, q_base, k_base, v_base, o_base, lse_base, sqn, skn, svn, son, N, P, R, C, REACH,
                  LEAD, GQ, qk_scale, BLOCK_L, TQR, TQC, TKR, TKC, HEAD_DIM, BLOCK_D, IEEE)


# --------------------------------------------------------------------------------------------------
# backward: dQ
# --------------------------------------------------------------------------------------------------


@triton.jit
def _dq_step(dq, q, do, lse, delta, k, v, vis, qk_scale, IEEE: tl.constexpr):
    s = _mma(q, tl.trans(k), tl.zeros([q.shape[0], k.shape[0]], dtype=tl.float32), IEEE)
    p = tl.where(vis, tl.math.exp2(s * qk_scale - lse[:, None]), 0.0)
    dp = _mma(do, tl.trans(v), tl.zeros([q.shape[0], k.shape[0]], dtype=tl.float32), IEEE)
    ds = p * (dp - delta[:, None])
    return _mma(ds.to(k.dtype), k, dq, IEEE)


@triton.jit
def _dq_line(dq, q, do, lse, delta, k_base, v_base, skn, svn, hi, qk_scale, BLOCK: tl.constexpr,
             HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    for start in range(0, hi, BLOCK):
        kj = start + offs
        k = _load_rows(k_base, kj, skn, hi, True, HEAD_DIM, BLOCK_D)
        v = _load_rows(v_base, kj, svn, hi, True, HEAD_DIM, BLOCK_D)
        dq = _dq_step(dq, q, do, lse, delta, k, v, (kj < hi)[None, :], qk_scale, IEEE)
    return dq


@triton.jit
def _dq_grid(dq, q, do, lse, delta, qr, qc, k_base, v_base, skn, svn, N, P, C, REACH, LEAD, r_lo, r_hi, c_lo, c_hi,
             qk_scale, TKR: tl.constexpr, TKC: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
             IEEE: tl.constexpr):
    n_c = tl.cdiv(c_hi - c_lo + 1, TKC)
    n_t = tl.cdiv(r_hi - r_lo + 1, TKR) * n_c
    for t in range(0, n_t):
        kr, kc = _tile_cells(r_lo + (t // n_c) * TKR, c_lo + (t % n_c) * TKC, TKR, TKC)
        inside = (kr <= r_hi) & (kc <= c_hi)
        kj = P + kr * C + kc
        rows = tl.where(inside, kj, N)
        k = _load_rows(k_base, rows, skn, N, True, HEAD_DIM, BLOCK_D)
        v = _load_rows(v_base, rows, svn, N, True, HEAD_DIM, BLOCK_D)
        vis = _near(qr, qc, kr, kc, REACH) & (inside & (kj >= LEAD))[None, :]
        dq = _dq_step(dq, q, do, lse, delta, k, v, vis, qk_scale, IEEE)
    return dq


@triton.jit
def _dq_rows(q_base, do_base, o_base, lse_base, delta_base, rows, sqn, son, N, HEAD_DIM: tl.constexpr,
             BLOCK_D: tl.constexpr):
    """q, dO, L of ``rows`` (N for none), and delta = rowsum(dO * O), which is written for the dK/dV kernel."""
    q = _load_rows(q_base, rows, sqn, N, True, HEAD_DIM, BLOCK_D)
    do = _load_rows(do_base, rows, son, N, True, HEAD_DIM, BLOCK_D)
    o = _load_rows(o_base, rows, son, N, True, HEAD_DIM, BLOCK_D)
    lse = tl.load(lse_base + rows, mask=rows < N, other=float("inf"))
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(delta_base + rows, delta, mask=rows < N)
    return q, do, lse, delta


@triton.jit
def _dq_global(pid, q_base, k_base, v_base, do_base, o_base, dq_base, lse_base, delta_base, sqn, skn, svn, son, N, GQ,
               sm_scale, qk_scale, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    rows = pid * BLOCK_G + tl.arange(0, BLOCK_G)
    rows = tl.where(rows < GQ, rows, N)
    q, do, lse, delta = _dq_rows(q_base, do_base, o_base, lse_base, delta_base, rows, sqn, son, N, HEAD_DIM, BLOCK_D)
    dq = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    dq = _dq_line(dq, q, do, lse, delta, k_base, v_base, skn, svn, N, qk_scale, BLOCK_N, HEAD_DIM, BLOCK_D, IEEE)
    _store_rows(dq_base, (dq * sm_scale).to(dq_base.dtype.element_ty), rows, sqn, N, HEAD_DIM, BLOCK_D)


@triton.jit
def _dq_tile(t, q_base, k_base, v_base, do_base, o_base, dq_base, lse_base, delta_base, sqn, skn, svn, son, N, P, R,
             C, REACH, LEAD, GQ, sm_scale, qk_scale, BLOCK_L: tl.constexpr, TQR: tl.constexpr, TQC: tl.constexpr,
             TKR: tl.constexpr, TKC: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
             IEEE: tl.constexpr):
    n_tc = tl.cdiv(C, TQC)
    r0 = (t // n_tc) * TQR
    c0 = (t % n_tc) * TQC
    qr, qc = _tile_cells(r0, c0, TQR, TQC)
    qi = P + qr * C + qc
    rows = tl.where((qr < R) & (qc < C) & (qi >= GQ), qi, N)
    q, do, lse, delta = _dq_rows(q_base, do_base, o_base, lse_base, delta_base, rows, sqn, son, N, HEAD_DIM, BLOCK_D)
    dq = tl.zeros([TQR * TQC, BLOCK_D], dtype=tl.float32)
    dq = _dq_line(dq, q, do, lse, delta, k_base, v_base, skn, svn, LEAD, qk_scale, BLOCK_L, HEAD_DIM, BLOCK_D, IEEE)
    r_lo, r_hi = _span(r0, tl.minimum(r0 + TQR, R) - 1, REACH, R)
    c_lo, c_hi = _span(c0, tl.minimum(c0 + TQC, C) - 1, REACH, C)
    dq = _dq_grid(dq, q, do, lse, delta, qr, qc, k_base, v_base, skn, svn, N, P, C, REACH, LEAD, r_lo, r_hi, c_lo,
                  c_hi, qk_scale, TKR, TKC, HEAD_DIM, BLOCK_D, IEEE)
    _store_rows(dq_base, (dq * sm_scale).to(dq_base.dtype.element_ty), rows, sqn, N, HEAD_DIM, BLOCK_D)


@triton.jit
def _nbhd_bwd_dq(Q, K, V, DO, Out, DQ, LSE, DELTA, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
                 slb, slh, H, GROUP, N, P, R, C, REACH, LEAD, GQ, sm_scale, qk_scale, TUNE_N,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr, BLOCK_G: tl.constexpr,
                 BLOCK_L: tl.constexpr, TQR: tl.constexpr, TQC: tl.constexpr, TKR: tl.constexpr,
                 TKC: tl.constexpr):
    # DQ shares Q's strides; DO and Out have (sob, soh, son); DELTA shares LSE's.
    b, h, hk = _query_head(H, GROUP)
    pid = tl.program_id(1)
    q_base = Q + b * sqb + h * sqh
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    do_base = DO + b * sob + h * soh
    o_base = Out + b * sob + h * soh
    dq_base = DQ + b * sqb + h * sqh
    lse_base = LSE + b * slb + h * slh
    delta_base = DELTA + b * slb + h * slh
    n_global = tl.cdiv(GQ, BLOCK_G)
    if pid < n_global:
        _dq_global(pid, q_base, k_base, v_base, do_base, o_base, dq_base, lse_base, delta_base, sqn, skn, svn, son, N,
                   GQ, sm_scale, qk_scale, BLOCK_G, TKR * TKC, HEAD_DIM, BLOCK_D, IEEE)
    else:
        _dq_tile(pid - n_global, q_base, k_base, v_base, do_base, o_base, dq_base, lse_base, delta_base, sqn, skn, svn,
                 son, N, P, R, C, REACH, LEAD, GQ, sm_scale, qk_scale, BLOCK_L, TQR, TQC, TKR, TKC, HEAD_DIM, BLOCK_D,
                 IEEE)


# --------------------------------------------------------------------------------------------------
# backward: dK, dV
# --------------------------------------------------------------------------------------------------


@triton.jit
def _dkdv_step(dk, dv, k, v, q_base, do_base, lse_base, delta_base, rows, vis, sqn, son, N, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    """One query tile (``rows``, N for none; ``vis`` [keys, queries]) into dK and dV of the program's keys."""
    q = _load_rows(q_base, rows, sqn, N, True, HEAD_DIM, BLOCK_D)
    do = _load_rows(do_base, rows, son, N, True, HEAD_DIM, BLOCK_D)
    lse = tl.load(lse_base + rows, mask=rows < N, other=float("inf"))
    delta = tl.load(delta_base + rows, mask=rows < N, other=0.0)
    s_t = _mma(k, tl.trans(q), tl.zeros([k.shape[0], q.shape[0]], dtype=tl.float32), IEEE)
    p_t = tl.where(vis, tl.math.exp2(s_t * qk_scale - lse[None, :]), 0.0)
    dv = _mma(p_t.to(do.dtype), do, dv, IEEE)
    dp_t = _mma(v, tl.trans(do), tl.zeros([k.shape[0], q.shape[0]], dtype=tl.float32), IEEE)
    ds_t = p_t * (dp_t - delta[None, :])
    dk = _mma(ds_t.to(q.dtype), q, dk, IEEE)
    return dk, dv


@triton.jit
def _dkdv_line(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqn, son, N, hi, qk_scale,
               BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    """Queries [0, hi) in 1-D tiles of BLOCK, all seeing the program's keys."""
    offs = tl.arange(0, BLOCK)
    for start in range(0, hi, BLOCK):
        qi = start + offs
        rows = tl.where(qi < hi, qi, N)
        dk, dv = _dkdv_step(dk, dv, k, v, q_base, do_base, lse_base, delta_base, rows, (qi < hi)[None, :], sqn,
                            son, N, qk_scale, HEAD_DIM, BLOCK_D, IEEE)
    return dk, dv


@triton.jit
def _dkdv_grid(dk, dv, k, v, kr, kc, q_base, do_base, lse_base, delta_base, sqn, son, N, P, C, REACH, GQ,
               r_lo, r_hi, c_lo, c_hi, qk_scale, TQR: tl.constexpr, TQC: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    """The TQR x TQC query tiles laid from (r_lo, c_lo) over [r_lo, r_hi] x [c_lo, c_hi], rows < GQ left out."""
    n_c = tl.cdiv(c_hi - c_lo + 1, TQC)
    n_t = tl.cdiv(r_hi - r_lo + 1, TQR) * n_c
    for t in range(0, n_t):
        qr, qc = _tile_cells(r_lo + (t // n_c) * TQR, c_lo + (t % n_c) * TQC, TQR, TQC)
        qi = P + qr * C + qc
        ok = (qr <= r_hi) & (qc <= c_hi) & (qi >= GQ)
        rows = tl.where(ok, qi, N)
        vis = _near(kr, kc, qr, qc, REACH) & ok[None, :]
        dk, dv = _dkdv_step(dk, dv, k, v, q_base, do_base, lse_base, delta_base, rows, vis, sqn, son, N, qk_scale,
                            HEAD_DIM, BLOCK_D, IEEE)
    return dk, dv


@triton.jit
def _dkdv_leading(pid, b, hk, Q, DO, LSE, DELTA, k_base, v_base, dk_base, dv_base, sqb, sqh, sqn, skn, svn, sob, soh,
                  son, slb, slh, GROUP, N, LEAD, sm_scale, qk_scale, BLOCK_L: tl.constexpr, BLOCK_M: tl.constexpr,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    """Leading keys [pid * BLOCK_L, ...) below LEAD: every query sees them."""
    keys = pid * BLOCK_L + tl.arange(0, BLOCK_L)
    rows = tl.where(keys < LEAD, keys, N)
    k = _load_rows(k_base, rows, skn, N, True, HEAD_DIM, BLOCK_D)
    v = _load_rows(v_base, rows, svn, N, True, HEAD_DIM, BLOCK_D)
    dk = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        dk, dv = _dkdv_line(dk, dv, k, v, Q + b * sqb + h * sqh, DO + b * sob + h * soh, LSE + b * slb + h * slh,
                            DELTA + b * slb + h * slh, sqn, son, N, N, qk_scale, BLOCK_M, HEAD_DIM, BLOCK_D, IEEE)
    _store_rows(dk_base, (dk * sm_scale).to(dk_base.dtype.element_ty), rows, skn, N, HEAD_DIM, BLOCK_D)
    _store_rows(dv_base, dv.to(dv_base.dtype.element_ty), rows, svn, N, HEAD_DIM, BLOCK_D)


@triton.jit
def _dkdv_tile(t, b, hk, Q, DO, LSE, DELTA, k_base, v_base, dk_base, dv_base, sqb, sqh, sqn, skn, svn, sob, soh, son,
               slb, slh, GROUP, N, P, R, C, REACH, LEAD, GQ, sm_scale, qk_scale, BLOCK_G: tl.constexpr,
               TQR: tl.constexpr, TQC: tl.constexpr, TKR: tl.constexpr, TKC: tl.constexpr, HEAD_DIM: tl.constexpr,
               BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    """Key tile t of the grid's fixed tiling: the global queries, then the query tiles within reach."""
    n_tc = tl.cdiv(C, TKC)
    r0 = (t // n_tc) * TKR
    c0 = (t % n_tc) * TKC
    kr, kc = _tile_cells(r0, c0, TKR, TKC)
    kj = P + kr * C + kc
    rows = tl.where((kr < R) & (kc < C) & (kj >= LEAD), kj, N)  # leading keys belong to `_dkdv_leading`
    k = _load_rows(k_base, rows, skn, N, True, HEAD_DIM, BLOCK_D)
    v = _load_rows(v_base, rows, svn, N, True, HEAD_DIM, BLOCK_D)
    dk = tl.zeros([TKR * TKC, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([TKR * TKC, BLOCK_D], dtype=tl.float32)
    r_lo, r_hi = _span(r0, tl.minimum(r0 + TKR, R) - 1, REACH, R)
    c_lo, c_hi = _span(c0, tl.minimum(c0 + TKC, C) - 1, REACH, C)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        q_base = Q + b * sqb + h * sqh
        do_base = DO + b * sob + h * soh
        lse_base = LSE + b * slb + h * slh
        delta_base = DELTA + b * slb + h * slh
        dk, dv = _dkdv_line(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqn, son, N, GQ, qk_scale, BLOCK_G,
                            HEAD_DIM, BLOCK_D, IEEE)
        dk, dv = _dkdv_grid(dk, dv, k, v, kr, kc, q_base, do_base, lse_base, delta_base, sqn, son, N, P, C, REACH, GQ,
                            r_lo, r_hi, c_lo, c_hi, qk_scale, TQR, TQC, HEAD_DIM, BLOCK_D, IEEE)
    _store_rows(dk_base, (dk * sm_scale).to(dk_base.dtype.element_ty), rows, skn, N, HEAD_DIM, BLOCK_D)
    _store_rows(dv_base, dv.to(dv_base.dtype.element_ty), rows, svn, N, HEAD_DIM, BLOCK_D)


@triton.jit
def _nbhd_bwd_dkdv(Q, K, V, DO, DK, DV, LSE, DELTA, sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
                   slb, slh, HKV, GROUP, N, P, R, C, REACH, LEAD, GQ, sm_scale, qk_scale, TUNE_N,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr, BLOCK_G: tl.constexpr,
                   BLOCK_L: tl.constexpr, TQR: tl.constexpr, TQC: tl.constexpr, TKR: tl.constexpr,
                   TKC: tl.constexpr):
    # DK shares K's strides and DV shares V's strides; DO shares O's strides (sob, soh, son).
    pid_bh = tl.program_id(0)
    pid = tl.program_id(1)
    b = (pid_bh // HKV).to(tl.int64)
    hk = (pid_bh % HKV).to(tl.int64)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    dk_base = DK + b * skb + hk * skh
    dv_base = DV + b * svb + hk * svh
    n_lead = tl.cdiv(LEAD, BLOCK_L)
    if pid < n_lead:  # the longest programs first
        _dkdv_leading(pid, b, hk, Q, DO, LSE, DELTA, k_base, v_base, dk_base, dv_base, sqb, sqh, sqn, skn, svn, sob,
                      soh, son, slb, slh, GROUP, N, LEAD, sm_scale, qk_scale, BLOCK_L, TQR * TQC, HEAD_DIM, BLOCK_D,
                      IEEE)
    else:
        _dkdv_tile(pid - n_lead, b, hk, Q, DO, LSE, DELTA, k_base, v_base, dk_base, dv_base, sqb, sqh, sqn, skn, svn,
                   sob, soh, son, slb, slh, GROUP, N, P, R, C, REACH, LEAD, GQ, sm_scale, qk_scale, BLOCK_G, TQR, TQC,
                   TKR, TKC, HEAD_DIM, BLOCK_D, IEEE)


# --------------------------------------------------------------------------------------------------
# tuned entry points and launch wrappers
# --------------------------------------------------------------------------------------------------

_fwd = TunedKernel(_nbhd_fwd, _fwd_configs(), _KEY, prune=_small_untuned)
_dq = TunedKernel(_nbhd_bwd_dq, _fwd_configs(), _KEY, prune=_small_untuned)
_dkdv = TunedKernel(_nbhd_bwd_dkdv, _dkdv_configs(), _KEY, prune=_small_untuned)


class GridMask:
    """The pattern in kernel form: ``prefix`` tokens, then a ``rows`` x ``cols`` grid; cells within ``reach``
    rows and columns see each other; keys < ``leading`` are seen by all, queries < ``global_queries`` see all.
    Checked by the caller (`neighbourhood_function`)."""

    def __init__(self, *, prefix: int, rows: int, cols: int, reach: int, leading: int, global_queries: int):
        self.prefix, self.rows, self.cols = int(prefix), int(rows), int(cols)
        self.reach = min(int(reach), max(self.rows, self.cols))  # a wider reach sees the same keys
        self.leading, self.global_queries = int(leading), int(global_queries)


def _tiles(extent: int, tile: int) -> int:
    return -(-extent // tile)


def _scalars(q, mask: GridMask) -> tuple:
    n = q.shape[2]
    return (n, mask.prefix, mask.rows, mask.cols, mask.reach, mask.leading, mask.global_queries)


def _meta(q, mask: GridMask) -> dict:
    d = q.shape[-1]
    return dict(HEAD_DIM=d, BLOCK_D=max(16, power_of_2_at_least(d)), IEEE=q.dtype == torch.float32,
                BLOCK_G=_line_block(mask.global_queries), BLOCK_L=_line_block(mask.leading),
                TUNE_N=max(64, power_of_2_at_least(q.shape[2])), REACH=mask.reach)


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride(0), x.stride(1), x.stride(2)


def neighbourhood_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, mask: GridMask):
    """Launch the forward kernel on q [B, Hq, N, D], k, v [B, Hkv, N, D] (unit last stride). Returns (o, lse),
    lse fp32 [B, Hq, N] in base 2."""
    batch, hq, n, _ = q.shape
    hkv = k.shape[1]
    o = _empty(q.shape, q)
    lse = _empty((batch, hq, n), q, torch.float32)
    n_, p, r, c, _, lead, gq = _scalars(q, mask)
    meta = _meta(q, mask)
    qk_scale = float(scale) * 1.4426950408889634

    def grid(m):
        return (batch * hq, _tiles(gq, m["BLOCK_G"]) + _tiles(r, m["TQR"]) * _tiles(c, m["TQC"]))

    args = (q, k, v, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o), lse.stride(0), lse.stride(1),
            hq, hq // hkv, n_, p, r, c)
    _fwd.launch(grid, args, dict(LEAD=lead, GQ=gq, qk_scale=qk_scale, **meta), q.dtype)
    return o, lse


def neighbourhood_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                           lse: torch.Tensor, scale: float, mask: GridMask):
    """Launch the dQ kernel (which also writes delta) and then the dK/dV kernel; returns (dq, dk, dv)."""
    batch, hq, n, _ = q.shape
    hkv = k.shape[1]
    do = do.contiguous()
    o = o.contiguous()  # the same shape as do, so the same strides
    delta = _empty(lse.shape, lse)
    dq, dk, dv = _empty_like(q), _empty_like(k), _empty_like(v)
    n_, p, r, c, _, lead, gq = _scalars(q, mask)
    meta = _meta(q, mask)
    qk_scale = float(scale) * 1.4426950408889634
    strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(do), lse.stride(0), lse.stride(1))
    scalars = dict(LEAD=lead, GQ=gq, sm_scale=float(scale), qk_scale=qk_scale, **meta)

    def dq_grid(m):
        return (batch * hq, _tiles(gq, m["BLOCK_G"]) + _tiles(r, m["TQR"]) * _tiles(c, m["TQC"]))

    def dkdv_grid(m):
        return (batch * hkv, _tiles(lead, m["BLOCK_L"]) + _tiles(r, m["TKR"]) * _tiles(c, m["TKC"]))

    _dq.launch(dq_grid, (q, k, v, do, o, dq, lse, delta, *strides, hq, hq // hkv, n_, p, r, c), scalars, q.dtype)
    _dkdv.launch(dkdv_grid, (q, k, v, do, dk, dv, lse, delta, *strides, hkv, hq // hkv, n_, p, r, c), scalars,
                 q.dtype)
    return dq, dk, dv
