"""The compact mask our mask policy hands every layer: which token slots are real and where the queries are.

Transformers gives an attention function whatever the model's mask policy built. It passes 4-D tensors
through untouched (as an already prepared mask), and for compiled static caches `generate()` builds the
mask once per step, outside the compiled forward, and calls ``.contiguous()`` on it. So the layout is a
small 4-D tensor, never N×N:

    uint8 [rows, placement, channels, tokens]

* ``tokens``: the token positions this forward covers: every token seen so far (past and present), or
  the slots of a static cache;
* ``placement`` is 1 when the queries are the last positions of the span (every growing cache, and no
  cache), 2 when they are its first (the prompt written into a fresh static cache, whose slots lie
  ahead of it); the rows repeat along it;
* channel 0 holds `REAL` where the position holds a real token, 0 where it is padding. ``rows`` is the
  batch size, or 0 when no row has padding: the tensor is then empty and only its shape speaks;
* channel 1 exists for static caches only (``channels == 2``) and holds `QUERY` at the positions of this
  forward's queries. Their first position is a tensor there, not a host number: CUDA graphs replay one
  decoding step for every position, so nothing about it may be read on the host.

The dtype tells a layout apart from a caller's own 4-D mask (bool or float). Everything a layer derives
from it is either read off the shape (host facts: how many tokens, whether padding may exist, whether
the cache is static) or computed on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LAYOUT_DTYPE = torch.uint8
REAL = 1
QUERY = 1


@dataclass(frozen=True)
class Layout:
    """What a layout tensor says, in the terms a layer uses.

    Attributes:
        tokens: token positions covered (host int, from the shape).
        queries_first: whether the queries are the first positions of the span, not its last.
        padding: bool ``[batch|1, tokens]``, True for real tokens, or None when no row has padding.
        query_start: 0-d long tensor, the position of the first query, for static caches; None when the
            queries are the last ``q_len`` of ``tokens`` (growing caches and no cache).
        source: the layout tensor itself (its identity keys per-forward memos).
    """

    tokens: int
    queries_first: bool
    padding: torch.Tensor | None
    query_start: torch.Tensor | None
    source: torch.Tensor

    @property
    def static(self) -> bool:
        return self.query_start is not None


def make_layout(
    *,
    tokens: int,
    padding: torch.Tensor | None,
    query_start: torch.Tensor | None = None,
    query_length: int = 0,
    queries_first: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Encode a layout (see the module docstring).

    Args:
        tokens: positions covered.
        padding: bool ``[batch, <= tokens]`` real-token mask, shorter masks padded as not real (a static
            cache's slots beyond the tokens seen), or None for no padding.
        query_start: 0-d long tensor of the first query position for static caches, else None.
        query_length: number of queries (static caches only).
        queries_first: the queries are the first positions, not the last (see the module docstring).
        device: where to build it when neither tensor says.
    """
    placement = 2 if queries_first else 1
    if padding is not None:
        device = padding.device
    elif query_start is not None:
        device = query_start.device
    real = None
    if padding is not None:
        real = padding.to(torch.bool)[:, :tokens]
        if real.shape[-1] < tokens:
            real = torch.nn.functional.pad(real, (0, tokens - real.shape[-1]), value=False)
    if query_start is None:
        if real is None:
            return torch.empty(0, placement, 1, tokens, dtype=LAYOUT_DTYPE, device=device)
        return real.to(LAYOUT_DTYPE)[:, None, None, :].expand(-1, placement, 1, -1)
    if real is None:
        real = torch.ones(1, tokens, dtype=torch.bool, device=device)
    positions = torch.arange(tokens, device=device)
    queries = (positions >= query_start) & (positions < query_start + query_length)
    channels = torch.stack([real, queries[None, :].expand_as(real)], dim=1)  # [rows, 2, tokens]
    return channels.to(LAYOUT_DTYPE)[:, None]


def is_layout(mask: object) -> bool:
    """Whether ``mask`` is a layout made by `make_layout` (not a caller's own mask)."""
    return isinstance(mask, torch.Tensor) and mask.dtype == LAYOUT_DTYPE and mask.dim() == 4


def read_layout(mask: torch.Tensor) -> Layout:
    """Decode a layout tensor: host facts from its shape, the rest as device tensors."""
    rows, placement, channels, tokens = mask.shape
    padding = mask[:, 0, 0, :] != 0 if rows else None
    query_start = None
    if channels == 2:
        # the first marked slot; marks are contiguous, so argmax of the marks finds it on the device
        query_start = mask[0, 0, 1, :].to(torch.int32).argmax().to(torch.long)
    return Layout(tokens=tokens, queries_first=placement == 2, padding=padding, query_start=query_start, source=mask)
