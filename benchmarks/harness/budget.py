"""A run's time budget: past it, entries are not started and say so, and what was measured is kept."""

from __future__ import annotations

import time

SKIPPED = "skipped (time budget)"
"""The cell of an entry not started because the budget was spent."""


class Deadline:
    """Seconds left of ``seconds`` counted from ``start`` (default: now)."""

    def __init__(self, seconds: float, start: float | None = None):
        self.start = time.time() if start is None else start
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.time() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def passed(self) -> bool:
        return self.left() <= 0
