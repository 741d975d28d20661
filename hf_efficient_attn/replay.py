"""A forward's planned attention calls, run again in its later layers without planning.

At batch-1 decoding the GPU waits on the host, and the host time of an attention call (its context, the
variant's module call, the dispatch rule and its planning) is what separates a patched model from the
unpatched one. The layers of one forward hand the same layout, position ids and shapes to variants with
equal options, so they make the same call: the first plans it (`AttentionVariant.plan`, a function of
``(query, key, value)`` alone) and the others run that plan directly, at the cost of one dictionary
lookup.

Plans are kept for one forward: for the layout tensor the mask policy made for it (by identity, while it
lives; a caller's own mask is never a key, it may change in place), under a key of everything else the
call reads. The first call of another forward, whose layout is a new tensor, starts afresh, and the plans
go when their layout is freed. Under ``torch.compile`` nothing is kept: the compiler traces the path.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable

import torch

Plan = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class ReplayMemo:
    """The plans of the current forward's calls, keyed by what they were planned from."""

    def __init__(self) -> None:
        self._layout: weakref.ref | None = None
        self._plans: dict[Hashable, tuple[int, Plan]] = {}

    def get(self, layout: torch.Tensor | None, key: Hashable) -> tuple[int, Plan] | None:
        """The keys a kept plan attends over and the plan, or None when this forward has not made it."""
        if layout is None or self._layout is None or self._layout() is not layout:
            return None
        return self._plans.get(key)

    def put(self, layout: torch.Tensor, key: Hashable, keys_seen: int, plan: Plan) -> None:
        """Keep a plan for the later layers of the forward that ``layout`` belongs to."""
        if self._layout is None or self._layout() is not layout:
            self._layout = weakref.ref(layout, self._forget)
            self._plans = {}
        self._plans[key] = (keys_seen, plan)

    def _forget(self, ref: weakref.ref) -> None:
        """Drop the plans (and the contexts they hold) once their forward's layout is freed."""
        if self._layout is ref:
            self._layout = None
            self._plans = {}

    def __len__(self) -> int:
        return len(self._plans)
