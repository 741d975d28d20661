"""One context per forward: the facts every layer of a forward shares, derived once.

A model hands each layer of one forward the same mask (our layout tensor, made by the mask policy for
that forward and never modified), the same position ids and, in a decoder, queries and keys of the
same shapes, so the `AttentionContext` of every layer is the same. Deriving it costs tens of
microseconds of host time per layer, and at batch-1 decoding, where the GPU waits on the host, that is
the whole difference between a patched model and the unpatched one. Eager calls therefore look it up
here first, keyed by what it is derived from: the layout's identity, the position ids' identity where
they matter (packed documents), the shapes, the device, the layer's flags and the grad mode.

Calls with a caller's own 4-D mask are not remembered (the caller may change it in place), and under
``torch.compile`` nothing is: the compiler traces the derivation instead.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import torch

from .context import AttentionContext, build_context, drop_future_keys, tracing
from .layout import is_layout


class ContextMemo:
    """A bounded map from a call's inputs to its `AttentionContext` (the oldest entry goes first)."""

    def __init__(self, max_entries: int = 32) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, tuple[weakref.ref | None, weakref.ref | None, AttentionContext]] = (
            OrderedDict()
        )

    def get(
        self,
        *,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: object,
        causal: bool,
        scaling: float,
        dropout: float,
        cache_window: int | None,
        position_ids: torch.Tensor | None,
        native_window: int | None,
    ) -> AttentionContext:
        """The context of a call (`build_context`, then `drop_future_keys`), derived unless an earlier
        layer of the same forward derived it from the same inputs."""
        q_len, k_len = query.shape[-2], key.shape[-2]
        ids = position_ids if causal and q_len == k_len else None  # position ids matter for documents only
        remembered = not (
            tracing()
            or (attention_mask is not None and not is_layout(attention_mask))  # a caller's mask may change
            or (attention_mask is None and ids is not None)  # nothing ties position ids to one forward
        )
        if remembered:
            entry_key = (
                None if attention_mask is None else id(attention_mask),
                None if ids is None else id(ids),
                query.shape[0],
                q_len,
                k_len,
                query.device,
                causal,
                scaling,
                dropout,
                cache_window,
                native_window,
                torch.is_grad_enabled(),
                torch.is_inference_mode_enabled(),
            )
            entry = self._entries.get(entry_key)
            if entry is not None and _alive(entry[0], attention_mask) and _alive(entry[1], ids):
                return entry[2]
        context = build_context(
            query=query,
            key=key,
            attention_mask=attention_mask,
            causal=causal,
            scaling=scaling,
            dropout=dropout,
            cache_window=cache_window,
            position_ids=position_ids,
            native_window=native_window,
        )
        context = drop_future_keys(context, k_len)
        if remembered:
            self._entries[entry_key] = (self._watch(attention_mask, entry_key), self._watch(ids, entry_key), context)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return context

    def _watch(self, tensor: torch.Tensor | None, entry_key: tuple) -> weakref.ref | None:
        """A weak reference that drops the entry when the tensor is freed (the forward is over)."""
        if tensor is None:
            return None
        entries = self._entries

        def drop(ref: weakref.ref) -> None:
            entry = entries.get(entry_key)
            if entry is not None and ref in (entry[0], entry[1]):
                del entries[entry_key]

        return weakref.ref(tensor, drop)

    def __len__(self) -> int:
        return len(self._entries)


def _alive(ref: weakref.ref | None, tensor: torch.Tensor | None) -> bool:
    """Whether an entry's reference still names this very tensor (ids are reused once a tensor is freed)."""
    return tensor is None if ref is None else ref() is tensor
