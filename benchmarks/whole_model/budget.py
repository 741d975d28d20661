"""The whole-model run's clock: a `harness.budget.Deadline` that also extrapolates each row's time from its
shorter lengths, so that a run that cannot finish (in the budget, or under --max-run-s) is skipped."""

from __future__ import annotations

import math

from benchmarks.harness.budget import SKIPPED, Deadline
from benchmarks.whole_model.rows import FIRST_RUN_S

Key = tuple[str, str, str]
"""A row's timings: (family, config, mode)."""


class Budget(Deadline):
    """The budget, each row's timings so far, and the rows stopped (an OOM: longer lengths are not tried)."""

    def __init__(self, seconds: float, max_run_s: float, start: float):
        super().__init__(seconds, start)
        self.max_run_s = max_run_s
        self.history: dict[Key, list[tuple[int, float]]] = {}
        self.stopped: dict[Key, str] = {}

    def estimate(self, key: Key, tokens: int) -> float | None:
        """Seconds of a run at ``tokens``, from the two longest shorter runs (a power between 1 and 2)."""
        points = sorted(p for p in self.history.get(key, []) if p[0] < tokens)
        if not points:
            return None
        n1, t1 = points[-1]
        power = 2.0
        if len(points) > 1:
            n0, t0 = points[-2]
            power = min(2.0, max(1.0, math.log(max(t1, 1e-9) / max(t0, 1e-9)) / math.log(n1 / n0)))
        return t1 * (tokens / n1) ** power

    def skip_reason(self, key: Key, tokens: int) -> str | None:
        """Why row ``key`` is not run at ``tokens``, or None."""
        if key in self.stopped:
            return f"skipped ({self.stopped[key]})"
        estimate = self.estimate(key, tokens)
        if self.left() <= (FIRST_RUN_S.get(key[1], 5.0) if estimate is None else 0):
            return SKIPPED
        if estimate is not None and estimate > self.max_run_s:
            return f"skipped (est. {estimate:.0f} s a run > --max-run-s)"
        if estimate is not None and 2 * estimate > self.left():
            return SKIPPED
        return None

    def record(self, key: Key, tokens: int, seconds: float) -> None:
        self.history.setdefault(key, []).append((tokens, seconds))
