"""Peak memory of a block of work.

On CUDA the allocator's peak since it was reset: everything allocated at the time, weights included. The
CPU has no such counter: `allocator_peak` is None there (a table shows no figure rather than a wrong one),
and `peak_during` falls back to the growth of the process's resident set, sampled every millisecond
(`hf_efficient_attn.measure`): coarse, as freed memory may stay resident and be reused unseen.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from hf_efficient_attn.measure import measure

GIB = 2**30
MIB = 2**20


def reset_peak(device: torch.device) -> None:
    """Start a new peak from what is allocated now (CUDA; nothing to reset on the CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def allocator_peak(device: torch.device) -> int | None:
    """Bytes at the allocator's peak since the last reset; None on the CPU."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def gib(count: int | None) -> float | None:
    """Bytes in GiB to three decimals, as tables show them; None stays None."""
    return None if count is None else round(count / GIB, 3)


def release_cached(device: torch.device, collect: bool = True) -> None:
    """Return the allocator's cached blocks to the device, so that the next peak counts only what the next
    work holds; ``collect`` first frees tensors held in reference cycles (slow: ~0.5 s)."""
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class Peak:
    """The peak bytes of a block, known once the block has ended."""

    bytes: int = 0


@contextmanager
def peak_during(device: torch.device) -> Iterator[Peak]:
    """The block's peak memory: CUDA's allocator peak (weights included), the resident-set growth on the CPU."""
    peak = Peak()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        reset_peak(device)
        yield peak
        torch.cuda.synchronize(device)
        peak.bytes = allocator_peak(device)
        return
    with measure(device) as measured:
        yield peak
    peak.bytes = measured.peak_bytes
