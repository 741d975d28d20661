"""benchmarks/kernel_speed.py counts the pairs each pattern computes (its TFLOP/s divide by them): checked
against the pattern's mask, pair by pair."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.kernel_speed import PATTERNS, visible_pairs  # noqa: E402


def counted_by_mask(n: int, window: int | None, sinks: int) -> int:
    i = torch.arange(n)
    seen = i[None, :] <= i[:, None]
    if window:
        seen &= ((i[:, None] - i[None, :]) < window) | (i[None, :] < sinks)
    return int(seen.sum())


@pytest.mark.parametrize(("n", "window", "sinks"), [
    (50, None, 0), (50, 8, 0), (50, 8, 4), (50, 3, 5), (16, 20, 4), (64, 16, 16), (64, 16, 20), (40, None, 4),
])
def test_visible_pairs_are_the_masks(n, window, sinks):
    assert visible_pairs(n, window, sinks) == counted_by_mask(n, window, sinks)


def test_every_pattern_counts_its_pairs_at_a_small_size():
    for window, sinks in PATTERNS.values():
        small = None if window is None else window // 64
        assert visible_pairs(96, small, sinks) == counted_by_mask(96, small, sinks)
