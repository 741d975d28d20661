"""Timing on a device: CUDA events on a GPU, the wall clock on the CPU.

`Timer` and `run_ms` time one run of a piece of work (a model forward, a decoding stretch, a first call at
a new shape): the device is drained before it starts, and CUDA events bracket the work on the stream, so
host time that keeps the GPU waiting counts as it would for a user. `call_ms` is the median of a warm call
for kernel-sized work: on a GPU `triton.testing.do_bench` (CUDA events, the L2 cache flushed between
calls), on the CPU the wall clock over a few calls after an untimed one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Milliseconds since it started (or restarted), read any number of times."""

    def __init__(self, device: torch.device):
        self.device = device
        self.restart()

    def restart(self) -> None:
        """Drain the device, then start counting."""
        synchronize(self.device)
        if self.device.type == "cuda":
            self._start: torch.cuda.Event | float = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def ms(self) -> float:
        """Milliseconds from the start to the end of the work queued so far (waits for it)."""
        if isinstance(self._start, float):
            return (time.perf_counter() - self._start) * 1e3
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return self._start.elapsed_time(end)


def run_ms(work: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one run of ``work``, the device drained before it."""
    timer = Timer(device)
    work()
    return timer.ms()


def call_ms(work: Callable[[], object], device: torch.device, rep_ms: int = 100, repeats: int = 5,
            grad_to_none: Sequence[torch.Tensor] = ()) -> float:
    """Median milliseconds of a warm call of ``work``: on a GPU ``do_bench`` measuring for about ``rep_ms``
    after a warm-up of a quarter of that (at least 25 ms); on the CPU ``repeats`` runs after an untimed one.
    ``grad_to_none`` are cleared before each call, so that gradients do not accumulate."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(work, warmup=max(25, rep_ms // 4), rep=rep_ms, grad_to_none=list(grad_to_none) or None,
                        return_mode="median")
    times = []
    for _ in range(repeats + 1):
        for tensor in grad_to_none:
            tensor.grad = None
        times.append(run_ms(work, device))
    return statistics.median(times[1:])

