"""One attention call ``fn(q, k, v)`` timed as a table cell: forward, or forward and backward, on the inputs
a kernel benchmark made; the cell is ``{"ms": median}`` or why there is none."""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmarks.harness.budget import SKIPPED, Deadline
from benchmarks.harness.checks import failure
from benchmarks.harness.timing import call_ms

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def attention_pass(fn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   backward: bool) -> Callable[[], object]:
    """One forward of ``fn(q, k, v)``, or forward and backward from a fixed random output gradient."""
    if not backward:
        return lambda: fn(q, k, v)
    grad = torch.randn_like(q)
    return lambda: fn(q, k, v).backward(grad)


def timed_call(fn: Attention | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backward: bool,
               deadline: Deadline, rep_ms: int = 100, repeats: int = 5) -> dict[str, float] | str:
    """``{"ms": median}`` of a warm call (`timing.call_ms`), or ``n/a`` (``fn`` is None: the implementation
    cannot run this), `budget.SKIPPED`, ``OOM`` or the error. The inputs' gradients and the device's cached
    blocks are freed after, so the next cell starts as this one did."""
    if fn is None:
        return "n/a"
    if deadline.passed():
        return SKIPPED
    try:
        work = attention_pass(fn, q, k, v, backward)
        return {"ms": round(call_ms(work, q.device, rep_ms, repeats, grad_to_none=(q, k, v) if backward else ()), 4)}
    except Exception as exc:  # report and go on
        return failure(exc)
    finally:
        for tensor in (q, k, v):
            tensor.grad = None
        if q.device.type == "cuda":
            torch.cuda.empty_cache()
