"""The attention implementations `kernel_speed.py` times against each other, each as ``(q, k, v) -> out`` on
one pattern (causal, or causal under a sliding window of W keys, with S sink tokens every query also sees),
or None where it cannot run here:
ours (Triton), our cuDNN-frontend backend, FlashAttention-4, torch SDPA's backends and FlexAttention.

FlexAttention takes block masks built at block level (no N x N mask) and one compiled function for every
shape (`compiled_flex_attention`, also used by `neighbourhood.py`); the window of its mask_mod is a tensor
filled per mask, so that a new window does not recompile it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.harness.compiling import allow_recompiles

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def ours_fn(window: int | None, sinks: int = 0) -> Attention:
    from hf_efficient_attn.kernels import fused_attention

    def f(q, k, v):
        return fused_attention(q, k, v, scale=q.shape[-1] ** -0.5, causal=True,
                               window=(window, None) if window else (None, None), sink_tokens=sinks)

    return f


def cudnn_frontend_fn(window: int | None, sinks: int = 0) -> Attention | None:
    """Our cuDNN backend (`backends.cudnn_sdpa`, the ``cudnn`` extra) on the same pattern; None where it
    is not installed or usable here, or the pattern has sinks (cuDNN's bands have none)."""
    from hf_efficient_attn.backends import cudnn_sdpa

    if sinks or not cudnn_sdpa.available():
        return None

    def f(q, k, v):
        return cudnn_sdpa.attention(q, k, v, scale=q.shape[-1] ** -0.5, causal=True, window_left=window,
                                    window_right=None)

    return f


def fa4_fn(window: int | None, sinks: int = 0) -> Attention | None:
    """FlashAttention-4 (CuTe DSL, the ``fa4`` package) on the same pattern, its inputs as [B, N, H, D]
    views of ours (no copy: it needs only the head dimension contiguous); None where it is not installed
    or the pattern has sinks. Its window counts the keys before the query: ours of W keys is (W - 1, 0)."""
    if sinks:
        return None
    try:
        from flash_attn.cute import flash_attn_func
    except Exception:  # noqa: BLE001 - not installed, or the CuTe DSL cannot load here
        return None

    def f(q, k, v):
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=q.shape[-1] ** -0.5,
                              causal=True, window_size=(window - 1, 0) if window else (None, None))
        return (out[0] if isinstance(out, tuple) else out).transpose(1, 2)

    return f


def fa4_layout_fn(layout: torch.Tensor, block: int) -> Attention | None:
    """FlashAttention-4's block sparsity on a layout [H, n / block, n / block] (bidirectional), every listed
    block whole, so no mask_mod: the forward lists each query block's key blocks, the backward each key
    block's query blocks; its Hopper kernels fit their tiles to the blocks. None where it is not installed."""
    try:
        from flash_attn.cute import flash_attn_func
        from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch
    except Exception:  # noqa: BLE001 - not installed, or the CuTe DSL cannot load here
        return None

    def lists(rows: torch.Tensor) -> BlockSparseTensorsTorch:
        count, index = _block_lists(rows)
        return BlockSparseTensorsTorch(mask_block_cnt=torch.zeros_like(count), mask_block_idx=index[..., :1],
                                       full_block_cnt=count, full_block_idx=index, block_size=(block, block))

    lay = layout.bool()
    forward, backward = lists(lay), lists(lay.transpose(1, 2).contiguous())

    def f(q, k, v):
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=q.shape[-1] ** -0.5,
                              block_sparse_tensors=forward, block_sparse_tensors_bwd=backward)
        return (out[0] if isinstance(out, tuple) else out).transpose(1, 2)

    return f


def sdpa_dense_fn(backend: str) -> Attention:
    """torch SDPA on one backend without a mask (bidirectional): the dense call a block layout saves on."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    b = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash2": SDPBackend.FLASH_ATTENTION}[backend]

    def f(q, k, v):
        with sdpa_kernel([b]):
            return sdpa(q, k, v)
    return f


def sdpa_fn(backend: str, window: int | None, n: int, sinks: int = 0) -> Attention | None:
    """torch SDPA limited to one backend (cudnn, flash2, efficient); a window (and its sinks) only as an
    explicit mask, on the memory-efficient backend and up to 16k tokens."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    b = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash2": SDPBackend.FLASH_ATTENTION,
         "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]
    if window is None:
        def f(q, k, v):
            with sdpa_kernel([b]):
                return sdpa(q, k, v, is_causal=True)
        return f
    if backend != "efficient" or n > 16384:
        return None
    i = torch.arange(n, device="cuda")
    mask = (i[None, :] <= i[:, None]) & ((i[:, None] - i[None, :] < window) | (i[None, :] < sinks))

    def f(q, k, v):
        with sdpa_kernel([b]):
            return sdpa(q, k, v, attn_mask=mask)
    return f


_FLEX: dict[str, Callable] = {}
_WINDOW: dict[str, torch.Tensor] = {}


def _window_mask_mod(b, h, q_idx, kv_idx):
    return (kv_idx <= q_idx) & ((q_idx - kv_idx < _WINDOW["size"]) | (kv_idx < _WINDOW["sinks"]))


def compiled_flex_attention() -> Callable:
    """flex_attention compiled once (static shapes), with dynamo's recompile limits raised."""
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        allow_recompiles()
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def _block_lists(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense [H, rows, cols] block flags -> (count [1, H, rows], column indices [1, H, rows, cols], the
    flagged ones first in order): the block lists of FlexAttention's BlockMask and FlashAttention-4."""
    num = m.sum(-1, dtype=torch.int32)
    idx = torch.argsort((~m).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num[None].contiguous(), idx[None].contiguous()


def _block_classes(any_b: torch.Tensor, all_b: torch.Tensor):
    """Dense [H, nQB, nKB] partial/full block flags -> BlockMask tensors (num, indices)."""
    return _block_lists(any_b & ~all_b), _block_lists(all_b)


def flex_window_mask(n: int, window: int | None, block: int = 128, sinks: int = 0):
    """BlockMask for causal (window=None) or causal sliding window with ``sinks`` leading keys every query
    sees, built at block level (no N x N)."""
    from torch.nn.attention.flex_attention import BlockMask

    w = n if window is None else window
    if "size" not in _WINDOW:  # one tensor each for every mask: the compiled mask_mod reads them, refilled per mask
        _WINDOW["size"] = torch.zeros((), dtype=torch.int64, device="cuda")
        _WINDOW["sinks"] = torch.zeros((), dtype=torch.int64, device="cuda")
    _WINDOW["size"].fill_(w)
    _WINDOW["sinks"].fill_(sinks)

    nb = (n + block - 1) // block
    qb = torch.arange(nb, device="cuda")
    p0, p1 = qb * block, torch.clamp(qb * block + block, max=n) - 1
    n0, n1 = p0, p1
    d_lo = n0[None, :] - p1[:, None]
    d_hi = n1[None, :] - p0[:, None]
    any_b = (d_lo <= 0) & ((d_hi > -w) | (n0[None, :] < sinks))
    all_b = (d_hi <= 0) & ((d_lo > -w) | (n1[None, :] < sinks))
    (pn, pi), (fn, fi) = _block_classes(any_b[None], all_b[None])
    return BlockMask.from_kv_blocks(pn, pi, fn, fi, BLOCK_SIZE=block, mask_mod=_window_mask_mod,
                                    seq_lengths=(n, n))


def flex_layout_mask(layout: torch.Tensor, n: int, lb: int, block: int = 128):
    """BlockMask of a block layout [H, n / lb, n / lb] of ``lb``-token blocks."""
    from torch.nn.attention.flex_attention import BlockMask

    lay = layout.bool()

    def mask_mod(b, h, q_idx, kv_idx):
        return lay[h, q_idx // lb, kv_idx // lb]

    r = block // lb
    h, nqb, nkb = lay.shape
    g = lay.reshape(h, nqb // r, r, nkb // r, r)
    any_b = g.any(4).any(2)
    all_b = g.all(4).all(2)
    (pn, pi), (fn, fi) = _block_classes(any_b, all_b)
    return BlockMask.from_kv_blocks(pn, pi, fn, fi, BLOCK_SIZE=block, mask_mod=mask_mod, seq_lengths=(n, n))


def flex_fn(block_mask) -> Attention:
    flex = compiled_flex_attention()

    def f(q, k, v):
        return flex(q, k, v, block_mask=block_mask)
    return f
