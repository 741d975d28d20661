"""Values derived from a tensor, remembered while that tensor is alive and unchanged.

Some facts that decide which code path runs must be read on the host (a `bool(...)` of a CUDA tensor
waits for the GPU): whether position ids describe packed documents, the tile lists of a block layout.
A model passes the same tensor object to every layer of one forward, and often the same layout in
every step, so computing such a fact once per tensor instead of once per layer removes a GPU
synchronisation from each layer. An entry is reused only for the same tensor object (held by weak
reference, so the memo never keeps a tensor alive) whose in-place version counter has not moved.
Inference tensors have no version counter; their values are computed on every call, unless the memo
is keyed by identity alone (``by_identity=True``), for tensors this library makes and never modifies.
Under ``torch.compile`` a memo is bypassed: the compiler sees the computation, not the host state.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

Value = TypeVar("Value")


@dataclass
class _Entry(Generic[Value]):
    tensor: weakref.ref
    version: int
    value: Value


class TensorMemo(Generic[Value]):
    """Least-recently-used map from (tensor object, extra key) to a value computed from them."""

    def __init__(self, max_entries: int = 64, by_identity: bool = False) -> None:
        self.max_entries = max_entries
        self.by_identity = by_identity
        self._entries: OrderedDict[tuple, _Entry[Value]] = OrderedDict()

    def get(self, tensor: torch.Tensor, extra: Hashable, compute: Callable[[], Value]) -> Value:
        """The remembered value for this tensor and ``extra``, or ``compute()`` (remembered when possible)."""
        if torch.compiler.is_compiling() or (not self.by_identity and tensor.is_inference()):
            return compute()
        version = 0 if self.by_identity else tensor._version
        key = (id(tensor), extra)
        entry = self._entries.get(key)
        if entry is not None and entry.tensor() is tensor and entry.version == version:
            self._entries.move_to_end(key)
            return entry.value
        value = compute()
        self._entries[key] = _Entry(weakref.ref(tensor, self._forget(key)), version, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def _forget(self, key: tuple) -> Callable[[weakref.ref], None]:
        """Weakref callback: drop the entry of a freed tensor (not a newer entry that reuses its id)."""
        entries = self._entries

        def drop(ref: weakref.ref) -> None:
            entry = entries.get(key)
            if entry is not None and entry.tensor is ref:
                del entries[key]

        return drop

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
