"""Compact tile lists for block layouts, built on the host side (in torch).

For kernel tiles of M x N (query positions x keys), each tile is classified against the whole mask
except key padding (which the kernels apply as a column mask everywhere):

* skipped: no visible pair;
* full: every pair visible (all covering layout blocks active, inside causal/window band, keys in
  bounds), so the kernel can run it without the element-wise mask;
* partial: anything else.

Rows of the lists are (layout head, query tile) for the forward and dQ kernels and
(layout head, key tile) for the dK/dV kernel, stored CSR-style: row_ptr[r]..row_ptr[r+1] index into
cols. Work is O(H * nQT * nKT) on tiles, never O(N^2) on elements.

For a row whose full tiles are one run of consecutive key tiles (a nearly dense layout, a band that
reaches the global blocks), the forward also gets the run's bounds: it walks the run as the dense
kernel walks its key range, by address arithmetic alone, where a list makes every tile's address wait
on a load of its index. Rows of several runs keep the list: one loop over all their tiles, not one
loop (and one pipeline start) per run.

Building the lists takes a dozen small kernels and several host synchronisations (`nonzero`), which
would cost more than the attention itself at 16k tokens and 10% density if paid on every call; the
caller keeps them per layout tensor (`fused_attention` through a `TensorMemo`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TileLists:
    block_m: int
    block_n: int
    n_mt: int
    n_nt: int
    fwd_rp_partial: torch.Tensor
    fwd_cols_partial: torch.Tensor
    fwd_rp_full: torch.Tensor
    fwd_cols_full: torch.Tensor
    bwd_rp_partial: torch.Tensor
    bwd_cols_partial: torch.Tensor
    bwd_rp_full: torch.Tensor
    bwd_cols_full: torch.Tensor
    fwd_run_start: torch.Tensor
    fwd_run_stop: torch.Tensor


def _csr(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mask [H, R, C] bool -> (row_ptr int32 [H*R + 1], cols int32 [nnz]) in row-major order."""
    h, r, c = mask.shape
    flat = mask.reshape(h * r, c)
    counts = flat.sum(1, dtype=torch.int32)
    row_ptr = torch.zeros(h * r + 1, dtype=torch.int32, device=mask.device)
    row_ptr[1:] = torch.cumsum(counts, 0, dtype=torch.int32)
    cols = flat.nonzero()[:, 1].to(torch.int32).contiguous()
    if cols.numel() == 0:
        cols = torch.zeros(1, dtype=torch.int32, device=mask.device)
    return row_ptr, cols


def build_tile_lists(layout: torch.Tensor, layout_block_size: int, nq: int, nk: int, *, causal: bool,
                     has_window: bool, wl: int, wr: int, sink: int, gq: int, block_m: int,
                     block_n: int) -> TileLists:
    """layout: [Hl, nQB, nKB] (bool/int) over query positions x keys, for kernel tiles of ``block_m``
    queries x ``block_n`` keys; see module docstring."""
    dev = layout.device
    lb = int(layout_block_size)
    off = nk - nq if causal else 0
    n_mt = (nq + block_m - 1) // block_m
    n_nt = (nk + block_n - 1) // block_n
    mt = torch.arange(n_mt, device=dev, dtype=torch.int64)
    nt = torch.arange(n_nt, device=dev, dtype=torch.int64)
    p0 = mt * block_m + off
    p1 = torch.clamp(mt * block_m + block_m, max=nq) - 1 + off
    n0 = nt * block_n
    n1 = torch.clamp(n0 + block_n, max=nk) - 1

    # layout coverage with a summed-area table over layout blocks
    lay = (layout != 0).to(torch.int32)
    n_h, n_qb, n_kb = lay.shape
    sat = torch.zeros(n_h, n_qb + 1, n_kb + 1, dtype=torch.int32, device=dev)
    sat[:, 1:, 1:] = lay.cumsum(1).cumsum(2)
    qb_lo = torch.clamp(p0, min=0, max=n_qb * lb - 1) // lb
    qb_hi = torch.clamp(p1, min=0, max=n_qb * lb - 1) // lb
    kb_lo = n0 // lb
    kb_hi = n1 // lb

    def corner(qi, ki):
        return sat[:, qi][:, :, ki]

    cnt = corner(qb_hi + 1, kb_hi + 1) - corner(qb_lo, kb_hi + 1) - corner(qb_hi + 1, kb_lo) + corner(qb_lo, kb_lo)
    area = ((qb_hi - qb_lo + 1)[:, None] * (kb_hi - kb_lo + 1)[None, :]).to(torch.int32)
    any_vis = cnt > 0
    all_vis = cnt == area[None]

    # band (causal / window) at tile level: j - p ranges over [n0 - p1, n1 - p0] on a tile
    d_lo = n0[None, :] - p1[:, None]
    d_hi = n1[None, :] - p0[:, None]
    band_any = torch.ones_like(d_lo, dtype=torch.bool)
    band_all = torch.ones_like(d_lo, dtype=torch.bool)
    if causal:
        band_any &= d_lo <= 0
        band_all &= d_hi <= 0
    if has_window:
        bypass = (n0[None, :] < sink) | (p0[:, None] < gq)
        band_any &= ((d_hi > -wl) & (d_lo < wr)) | bypass
        band_all &= (d_lo > -wl) & (d_hi < wr) & ~bypass
    # unmasked tiles load their keys without bounds checks, so the key tile must be complete. Query rows
    # past the end are harmless to the forward and dQ kernels (loaded as zeros, their log-sum-exp
    # infinite, stored nowhere), as in the dense launch; the dK/dV kernel, which sums over query rows,
    # runs a query tile unmasked only when it is complete.
    any_vis = any_vis & band_any[None]
    full_rows = any_vis & all_vis & (band_all & (n0 + block_n <= nk)[None, :])[None]
    full_columns = full_rows & (mt * block_m + block_m <= nq)[None, :, None]

    fwd_p = _csr(any_vis & ~full_rows)
    fwd_f = _csr(full_rows)
    bwd_p = _csr((any_vis & ~full_columns).transpose(1, 2))
    bwd_f = _csr(full_columns.transpose(1, 2))
    return TileLists(block_m, block_n, n_mt, n_nt, *fwd_p, *fwd_f, *bwd_p, *bwd_f, *_single_runs(full_rows))


def _single_runs(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mask [H, R, C] bool -> (start, stop) int32 [H*R]: the columns [start, stop) of each row whose True
    columns are one run of consecutive columns; start = stop = 0 for the other rows."""
    h, r, c = mask.shape
    flat = mask.reshape(h * r, c)
    before = torch.zeros_like(flat)
    before[:, 1:] = flat[:, :-1]
    single = (flat & ~before).sum(1) == 1
    columns = torch.arange(c, device=mask.device)
    start = torch.where(flat, columns, c).amin(1)
    stop = torch.where(flat, columns + 1, 0).amax(1)
    zero = torch.zeros_like(start)
    return torch.where(single, start, zero).to(torch.int32), torch.where(single, stop, zero).to(torch.int32)
