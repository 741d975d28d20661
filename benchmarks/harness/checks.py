"""Errors against a reference, verdicts on them, and failures as table cells.

A benchmark checks before it times: a kernel against float32 math, a patched model against the unpatched
one run in float32. An exact configuration passes when its error is within `TOLERANCE` times the
reference's own error in the run's dtype (plus 1e-3): rounding alone puts any low-precision run that far
from float32, so the bound grows and shrinks with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

TOLERANCE = 3.0


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """``|out - reference| / |reference|`` (Frobenius norms, in float64)."""
    out, reference = out.double(), reference.double()
    return ((out - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def max_abs_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """The largest elementwise ``|out - reference|`` (in float32)."""
    return (out.float() - reference.float()).abs().max().item()


def against_float32(out: torch.Tensor, reference32: torch.Tensor, reference: torch.Tensor,
                    exact: bool) -> dict[str, Any]:
    """The check of ``out`` against the reference run in float32 (``reference32``) and in the run's dtype
    (``reference``): its errors and its status, ``ok`` or ``FAIL`` for an exact configuration (see the module
    docstring), ``approximate`` for one that is not meant to be exact."""
    error, floor = relative_error(out, reference32), relative_error(reference, reference32)
    tolerance = TOLERANCE * floor + 1e-3
    status = ("ok" if error <= tolerance else "FAIL") if exact else "approximate"
    return {"rel_err_vs_fp32": error, "reference_rel_err_vs_fp32": floor,
            "rel_diff_vs_reference": relative_error(out, reference), "tolerance": tolerance if exact else None,
            "status": status}


def gradient_errors(fn: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor],
                    inputs: Sequence[torch.Tensor],
                    error: Callable[[torch.Tensor, torch.Tensor], float] = max_abs_error) -> dict[str, float]:
    """``error`` of ``fn(q, k, v)`` and of its gradients (one random output gradient) against ``reference``
    run on float32 copies of the inputs: ``{"out", "dq", "dk", "dv"}``."""
    out = fn(*inputs)
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, grad)
    leaves = [tensor.detach().float().requires_grad_() for tensor in inputs]
    expected = reference(*leaves)
    expected_grads = torch.autograd.grad(expected, leaves, grad.float())
    return {name: error(a, b) for name, a, b in
            zip(("out", "dq", "dk", "dv"), (out, *grads), (expected, *expected_grads), strict=True)}


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def failure(exc: BaseException) -> str:
    """A failed measurement as a table cell: ``OOM``, or the error's type and the start of its message."""
    if is_oom(exc):
        return "OOM"
    return f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
