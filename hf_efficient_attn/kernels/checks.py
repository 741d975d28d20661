"""Input validation for the fused kernels: clear errors, and a non-raising `supports` probe."""

from __future__ import annotations

import os

import torch

SUPPORTED_HEAD_DIMS = (32, 64, 80, 96, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class KernelInputError(ValueError):
    """Raised when inputs cannot be handled by the fused kernels."""


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_missing() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the environment
        return f"triton is not importable ({exc}); install it with `pip install triton`"
    return None


def device_reason(*tensors: torch.Tensor) -> str | None:
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        return f"q, k, v are on different devices ({sorted(str(d) for d in devices)}); move them to one device"
    dev = next(iter(devices))
    if dev.type == "cuda":
        return None
    if dev.type == "cpu" and interpreting():
        return None
    return (f"tensors are on device '{dev}'; the Triton kernels need CUDA tensors "
            "(or TRITON_INTERPRET=1 set before triton is imported, for slow CPU debugging)")


def _common_reason(q, k, v, dense: bool, max_head_dim: int | None = None) -> str | None:
    """Why the kernels cannot take these tensors, or None. Head dims: `SUPPORTED_HEAD_DIMS`, or any from
    1 to ``max_head_dim`` where given (kernels that pad the head dim with masked lanes)."""
    missing = triton_missing()
    if missing:
        return missing
    nd = 4 if dense else 3
    layout = "[B, H, N, D]" if dense else "[total_tokens, H, D]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            return f"{name} must be a torch.Tensor, got {type(t).__name__}"
        if t.dim() != nd:
            return f"{name} must be {nd}-D {layout}, got shape {tuple(t.shape)}"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"q.dtype={q.dtype} is not supported; cast to float16, bfloat16 or float32"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return f"q, k, v must share a dtype, got q={q.dtype}, k={k.dtype}, v={v.dtype}; cast k and v to q.dtype"
    d = q.shape[-1]
    if max_head_dim is not None and not 0 < d <= max_head_dim:
        return f"head_dim={d} is not supported; these kernels take 1 to {max_head_dim}"
    if max_head_dim is None and d not in SUPPORTED_HEAD_DIMS:
        return (f"head_dim={d} is not supported (supported: {SUPPORTED_HEAD_DIMS}); "
                "use the reference attention path for this model")
    if k.shape[-1] != d or v.shape[-1] != d:
        return f"head dims differ: q {d}, k {k.shape[-1]}, v {v.shape[-1]}; the kernels need equal head dims"
    hq = q.shape[1] if dense else q.shape[1]
    hkv = k.shape[1]
    if v.shape[1] != hkv:
        return f"k has {hkv} heads but v has {v.shape[1]}; they must match"
    if hkv == 0 or hq % hkv != 0:
        return (f"query heads ({hq}) must be a multiple of key/value heads ({hkv}) for GQA/MQA; "
                "pass k, v with a head count that divides q's")
    if dense:
        if k.shape[0] != q.shape[0] or v.shape[0] != q.shape[0]:
            return f"batch sizes differ: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}"
        if v.shape[2] != k.shape[2]:
            return f"k has {k.shape[2]} keys but v has {v.shape[2]}; they must match"
    elif v.shape[0] != k.shape[0]:
        return f"k has {k.shape[0]} tokens but v has {v.shape[0]}; they must match"
    return device_reason(q, k, v)


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None) -> str | None:
    """None when `fused_attention(q, k, v, ...)` can run on these tensors (and this softmax ``scale``,
    when given), else the reason why not."""
    try:
        return _common_reason(q, k, v, dense=True) or (None if scale is None else scale_reason(scale))
    except Exception as exc:  # a probe must never raise
        return f"could not inspect inputs: {exc}"


def check_dense(q, k, v, *, scale, window, sink_tokens, global_tokens, block_layout, layout_block_size,
                key_padding, causal) -> None:
    reason = _common_reason(q, k, v, dense=True)
    if reason:
        raise KernelInputError(reason)
    check_window(window, sink_tokens, global_tokens)
    _check_scale(scale)
    b, hq, nq, _ = q.shape
    nk = k.shape[2]
    if key_padding is not None:
        if not isinstance(key_padding, torch.Tensor) or tuple(key_padding.shape) != (b, nk):
            shape = tuple(key_padding.shape) if isinstance(key_padding, torch.Tensor) else type(key_padding)
            raise KernelInputError(f"key_padding must be a bool tensor of shape (batch, Nk) = ({b}, {nk}), "
                                   f"got {shape}")
        if key_padding.device != q.device:
            raise KernelInputError(f"key_padding is on {key_padding.device} but q is on {q.device}; move it")
    if block_layout is not None:
        if not isinstance(layout_block_size, int) or layout_block_size <= 0:
            raise KernelInputError(f"layout_block_size must be a positive int, got {layout_block_size!r}")
        if not isinstance(block_layout, torch.Tensor) or block_layout.dim() != 3:
            raise KernelInputError("block_layout must be a 3-D tensor [heads, query_blocks, key_blocks], got "
                                   f"{getattr(block_layout, 'shape', type(block_layout))}")
        hl, nqb, nkb = block_layout.shape
        if hl not in (1, hq):
            raise KernelInputError(f"block_layout has {hl} heads; it must have 1 (shared) or {hq} (one per "
                                   "query head)")
        max_qpos = (nk - 1) if causal else (nq - 1)
        need_q = max_qpos // layout_block_size + 1
        need_k = (nk - 1) // layout_block_size + 1
        if nqb < need_q or nkb < need_k:
            raise KernelInputError(
                f"block_layout shape {tuple(block_layout.shape)} is too small: with layout_block_size="
                f"{layout_block_size}, Nq={nq}, Nk={nk}, causal={causal} it needs at least "
                f"[{hl}, {need_q}, {need_k}]")
        if block_layout.device != q.device:
            raise KernelInputError(f"block_layout is on {block_layout.device} but q is on {q.device}; move it")


def check_window(window, sink_tokens, global_tokens) -> None:
    if not (isinstance(window, tuple | list) and len(window) == 2):
        raise KernelInputError(f"window must be a (left, right) pair of int or None, got {window!r}")
    for side, w in zip(("left", "right"), window, strict=True):
        if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 0):
            raise KernelInputError(f"window {side} reach must be None or an int >= 0, got {w!r}")
    for name, val in (("sink_tokens", sink_tokens), ("global_tokens", global_tokens)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 0:
            raise KernelInputError(f"{name} must be an int >= 0, got {val!r}")


def scale_reason(scale) -> str | None:
    """None for a softmax scale the kernels take, else why not."""
    if not isinstance(scale, int | float) or isinstance(scale, bool):
        return f"scale must be a float (usually head_dim ** -0.5), got {scale!r}"
    if not 0 < scale < float("inf"):
        # the kernels take a row's largest score before scaling, which needs a positive scale
        return f"scale must be positive and finite (usually head_dim ** -0.5), got {scale!r}"
    return None


def _check_scale(scale) -> None:
    reason = scale_reason(scale)
    if reason:
        raise KernelInputError(reason)


def check_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale, window, sink_tokens, global_tokens) -> None:
    reason = _common_reason(q, k, v, dense=False)
    if reason:
        raise KernelInputError(reason)
    check_window(window, sink_tokens, global_tokens)
    _check_scale(scale)
    for name, cu in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.dtype not in (torch.int32, torch.int64):
            raise KernelInputError(f"{name} must be a 1-D int32 tensor of batch+1 offsets, got "
                                   f"{getattr(cu, 'dtype', type(cu))} {getattr(cu, 'shape', '')}")
        if cu.device != q.device:
            raise KernelInputError(f"{name} is on {cu.device} but q is on {q.device}; move it")
    if cu_q.numel() != cu_k.numel():
        raise KernelInputError(f"cu_seqlens_q has {cu_q.numel()} entries but cu_seqlens_k has {cu_k.numel()}; "
                               "both need batch+1")
    for name, val in (("max_seqlen_q", max_q), ("max_seqlen_k", max_k)):
        if not isinstance(val, int) or val < 0:
            raise KernelInputError(f"{name} must be an int >= 0, got {val!r}")
