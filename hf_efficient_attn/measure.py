"""Wall time and peak memory of a piece of work, on CUDA (allocator peak) or on the CPU (resident set)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Measurement:
    """Seconds taken and peak bytes allocated above what was in use when measuring began."""

    seconds: float = 0.0
    peak_bytes: int = 0


def _resident_bytes() -> int:
    fields = Path("/proc/self/statm").read_text().split()
    return int(fields[1]) * 4096


@contextmanager
def measure(device: torch.device) -> Iterator[Measurement]:
    """Time the block and record its peak memory (CUDA allocator, else resident set sampled every ms)."""
    result = Measurement()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        yield result
        torch.cuda.synchronize(device)
        result.seconds = time.perf_counter() - start
        result.peak_bytes = torch.cuda.max_memory_allocated(device) - start_bytes
        return
    start_bytes = _resident_bytes()
    peak = [start_bytes]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        result.peak_bytes = max(0, max(peak[0], _resident_bytes()) - start_bytes)


def best_of(repeats: int, work: Callable[[], object], device: torch.device) -> tuple[object, Measurement]:
    """Run ``work`` ``repeats`` times; return its last result and the fastest measurement."""
    best: Measurement | None = None
    output = None
    for _ in range(repeats):
        with measure(device) as current:
            output = work()
        if best is None or current.seconds < best.seconds:
            best = current
    return output, best
