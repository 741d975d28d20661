"""A forward's planned attention calls, run again in its later layers without planning.

At batch-1 decoding the GPU waits on the host, and the host time of an attention call (its context, the
variant's module call, the dispatch rule and its planning) is what separates a patched model from the
unpatched one. The layers of one forward hand the same layout, position ids and shapes to variants with
equal options, so they make the same call: the first plans it (`AttentionVariant.plan`, a function of
``(query, key, value)`` alone) and the others run that plan directly, at the cost of one dictionary
lookup.

Plans are kept for one forward: for the layout tensor the mask policy made for it (by identity, while it
lives; a caller's own mask is never a key, it may change in place), under a key of everything else the
call reads. Another forward has a new layout tensor and plans afresh, and plans go when their layout is
freed. A call without a mask or position ids (Whisper's encoder) reads nothing but its shapes
and flags, all in the key, so its plan is kept across forwards: the encoder's next batch replays it from
the first layer on. Under ``torch.compile`` nothing is kept: the compiler traces the path.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

Plan = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class ReplayMemo:
    """The plans of the current forward's calls, keyed by what they were planned from.

    A forward may hand its layers more than one layout (models mixing full and sliding-window layers
    build one per kind), so the plans of the last `max_layouts` layouts are kept, each until its layout
    is freed.
    """

    def __init__(self, max_layouts: int = 4, max_unmasked: int = 16) -> None:
        self.max_layouts = max_layouts
        self.max_unmasked = max_unmasked
        self._forwards: OrderedDict[int, tuple[weakref.ref, dict[Hashable, tuple[int, Plan]]]] = OrderedDict()
        self._unmasked: OrderedDict[Hashable, tuple[int, Plan]] = OrderedDict()

    def get(self, layout: torch.Tensor | None, key: Hashable) -> tuple[int, Plan] | None:
        """The keys a kept plan attends over and the plan, or None when this forward has not made it
        (``layout`` None: a call without a mask, whose plans outlive their forward)."""
        if layout is None:
            return self._unmasked.get(key)
        kept = self._forwards.get(id(layout))
        if kept is None or kept[0]() is not layout:
            return None
        return kept[1].get(key)

    def put(self, layout: torch.Tensor | None, key: Hashable, keys_seen: int, plan: Plan) -> None:
        """Keep a plan for the later layers of the forward that ``layout`` belongs to; with ``layout``
        None, for every later call without a mask under the same key (which must then hold all the call
        reads: no position ids)."""
        if layout is None:
            self._unmasked[key] = (keys_seen, plan)
            while len(self._unmasked) > self.max_unmasked:
                self._unmasked.popitem(last=False)
            return
        kept = self._forwards.get(id(layout))
        if kept is None or kept[0]() is not layout:
            while len(self._forwards) >= self.max_layouts:
                self._forwards.popitem(last=False)  # the oldest layout's plans
            kept = self._forwards[id(layout)] = (weakref.ref(layout, self._forget(id(layout))), {})
        kept[1][key] = (keys_seen, plan)

    def _forget(self, layout_id: int) -> Callable[[weakref.ref], None]:
        """Drops a layout's plans (and the contexts they hold) once the layout is freed."""

        def forget(ref: weakref.ref) -> None:
            kept = self._forwards.get(layout_id)
            if kept is not None and kept[0] is ref:
                self._forwards.pop(layout_id, None)

        return forget

    def __len__(self) -> int:
        return len(self._unmasked) + sum(len(plans) for _, plans in self._forwards.values())
