"""The memory layouts the kernels take and give.

The kernels read and write through strides, so a query, key or value whose memory is dense and
non-overlapping with a unit last stride goes in as it is: transformers' ``[batch, heads, length, dim]``
views of ``[batch, length, heads, dim]`` projections need no copy. Every result computed from such a
tensor (the attention output from the query, each gradient from its input) takes that tensor's layout,
so transformers' ``transpose(1, 2).contiguous()`` after attention finds the output contiguous already,
as it does after SDPA. Other tensors are copied to contiguous memory and their results are contiguous.
The ops' fake implementations compute the same layouts from the same rule (`empty_in_kernel_layout`).
"""

from __future__ import annotations

import torch


def kernel_ready(x: torch.Tensor) -> bool:
    """Whether the kernels take ``x`` as it is: dense, non-overlapping memory with a unit last stride."""
    if x.is_contiguous() or (x.dim() == 4 and x.transpose(1, 2).is_contiguous()):
        return True  # the second: transformers' transposed projections, checked without the sort below
    if x.stride(-1) != 1:
        return False
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(x.stride(), x.shape, strict=True) if n > 1):
        if stride != expected:
            return False
        expected *= size
    return True


def dense_inputs(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself where the kernels take it as it is (`kernel_ready`), else a contiguous copy."""
    return x if kernel_ready(x) else x.contiguous()


def kernel_strides(x: torch.Tensor) -> tuple[int, ...]:
    """The strides of `dense_inputs(x)`, which results computed from ``x`` take."""
    if kernel_ready(x):
        return tuple(x.stride())
    strides, step = [], 1
    for size in reversed(x.shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def empty_in_kernel_layout(x: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of ``x``'s shape, dtype and device in the layout of results computed from ``x``."""
    return torch.empty_strided(x.shape, kernel_strides(x), dtype=x.dtype, device=x.device)


def in_kernel_layout(result: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``result`` (shaped like ``like``) in the layout of results computed from ``like``: itself where it has
    it, else a copy."""
    strides = kernel_strides(like)
    if tuple(result.stride()) == strides:
        return result
    out = torch.empty_strided(result.shape, strides, dtype=result.dtype, device=result.device)
    return out.copy_(result)
