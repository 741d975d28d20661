"""Bounded KV cache layers for windowed attention, and the hook that puts them in place.

With a causal sliding window of W keys (counting the query itself), a new token can only ever see the
W-1 tokens before it, plus any attention sinks. The layers here keep exactly those, so a layer's cache
stops growing once it holds ``prefix + W - 1`` tokens, whatever the generated length:

* `SinkWindowCacheLayer` replaces transformers' growing `DynamicLayer`;
* `StaticSinkWindowLayer` replaces a `StaticLayer` (``cache_implementation="static"``): fixed-size
  buffers written in place (the window as a ring), so compiled decoding replays under CUDA graphs.

Both keep a prefix of ``sink_tokens`` plus the leading padding of the batch (so every left-padded row
keeps its own first real tokens) and return, for each step, the prefix, the last ``W - 1`` earlier tokens
and the new ones (the static layer's decoding step: its prefix and its ring): `context.build_context`
reads the positions back from those shapes.

Transformers builds the cache (in `generate()` or the model itself) before any of our code runs,
knowing nothing of our variants. A forward pre-hook on the first bounded attention module of each stack
(`BoundedCacheInstaller`) replaces the stack's layers of the cache, through the public `Cache.layers`
list, the first time it sees them unwritten; later steps find them in place. A growing layer of another
kind (a quantized one) gives way to the bounded layer too, with a warning, since what it did besides
holding tokens (quantization) then no longer applies.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import (
    Cache,
    DynamicLayer,
    DynamicSlidingWindowLayer,
    EncoderDecoderCache,
    StaticLayer,
)

from .compat import cache_argument
from .context import first_true_index, tracing
from .grad_mode import records_grad
from .layout import is_layout, read_layout


class SinkWindowCacheLayer(DynamicLayer):
    """A growing cache layer that keeps the first ``prefix`` tokens and the last ``window - 1``.

    `update` returns what the step needs (the kept tokens and the new ones) as one tensor, made by one
    concatenation, and holds it: the trimming to the kept tokens happens at the next update, in the same
    concatenation. So the memory held is the kept tokens plus the last step's, and the last step can be
    rolled back (`crop`), which assisted decoding does with rejected drafts. `get_seq_length` counts all
    tokens ever seen, which positions and masks are built from.

    Once the window is full, one-token steps (decoding, outside autograd and tracing) write in place
    instead: the held ``prefix + window`` tokens become a ring whose oldest window token the new one
    replaces, and the step attends over the buffer as it is (one query sees all of it, so the order of
    the window's keys does not matter; the prefix, where left padding lies, keeps its place). A
    concatenation would copy the whole window at every step, from a strided slice of the held tensor:
    on an H100 at batch 16 after a 4k prompt (Llama-1B shapes, window 4096) those copies took 6.6 ms of
    each 13 ms step, against 1.5 ms for the unpatched cache's own concatenations. Any other update,
    and `crop`, first puts the ring back in order (`_unrolled`). Subclasses whose keys depend on their
    index in the returned tensor set `writes_in_place` to False. In a batch with left padding the ring
    waits until the pad tokens have left the window (`in_order_until`): a key's padding is read from its
    position, which in a ring is not its index.
    """

    is_sliding = True
    is_croppable = True
    writes_in_place = True

    def __init__(self, window: int, prefix: int = 0):
        super().__init__()
        self.window = window
        self.prefix = prefix
        self.cumulative_length = 0
        self.last_step = 0
        self.ring_start: int | None = None
        """Where the oldest window token sits among the window's slots while the held tokens are a ring."""
        self.in_order_until = 0
        """Tokens seen before which steps keep the held tokens in order (the installer's, for padded batches)."""

    @property
    def capacity(self) -> int:
        """Tokens kept between steps."""
        return self.prefix + self.window - 1

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        steps = key_states.shape[-2]
        self.cumulative_length += steps
        self.last_step = steps
        if self._writes_in_place(key_states, value_states):
            oldest = self.ring_start or 0
            slot = self.prefix + oldest
            self.keys[..., slot : slot + 1, :].copy_(key_states)
            self.values[..., slot : slot + 1, :].copy_(value_states)
            self.ring_start = (oldest + 1) % self.window
            return self.keys, self.values
        self._unrolled()
        self.keys = torch.cat([*self._kept(self.keys), key_states], dim=-2)
        self.values = torch.cat([*self._kept(self.values), value_states], dim=-2)
        return self.keys, self.values

    def _writes_in_place(self, key_states: torch.Tensor, value_states: torch.Tensor) -> bool:
        """A one-token step onto held ``prefix + window`` tokens (the window full, its oldest token about
        to leave), outside autograd (earlier steps' graphs may hold the buffer) and tracing (the slot is a
        host number)."""
        return (
            self.writes_in_place
            and key_states.shape[-2] == 1
            and self.keys.dim() >= 2
            and self.keys.shape[-2] == self.prefix + self.window
            and self.keys.shape[:-2] == key_states.shape[:-2]
            and self.cumulative_length >= self.in_order_until
            and not records_grad(key_states, value_states)
            and not tracing()
        )

    def _unrolled(self) -> None:
        """Put a ring's window back in order of position (oldest first), as the concatenations hold it."""
        if self.ring_start is None:
            return
        start, self.ring_start = self.prefix + self.ring_start, None
        if start == self.prefix:
            return

        def in_order(states: torch.Tensor) -> torch.Tensor:
            return torch.cat([states[..., : self.prefix, :], states[..., start:, :],
                              states[..., self.prefix : start, :]], dim=-2)

        self.keys, self.values = in_order(self.keys), in_order(self.values)

    def _kept(self, states: torch.Tensor) -> list[torch.Tensor]:
        """Views of what the next step needs of the held states: the prefix and the last ``window - 1``."""
        if states.dim() < 2 or states.shape[-2] <= self.capacity:
            return [states]
        recent = [states[..., states.shape[-2] - (self.window - 1) :, :]] if self.window > 1 else []
        return [states[..., : self.prefix, :], *recent] if self.prefix else recent

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # the mask covers every token position seen so far; the layer tells its kept keys apart by shape
        return self.cumulative_length + query_length, 0

    def get_max_length(self) -> int:
        return self.capacity

    get_max_cache_shape = get_max_length  # the name before transformers 5.14

    def crop(self, tokens: int) -> None:
        """Remove the newest tokens: ``tokens < 0`` removes ``-tokens``, ``tokens > 0`` keeps that many
        (the convention before transformers 5.17), 0 does nothing.

        Possible while nothing has been dropped, and for the tokens of the last step after the window moved
        on (what assisted decoding rejects); beyond that the message says what to do.
        """
        remove = -tokens if tokens <= 0 else self.cumulative_length - tokens
        if remove <= 0 or not self.is_initialized:
            return
        self._unrolled()
        held = self.keys.shape[-2]
        if held < self.cumulative_length and remove > self.last_step:
            raise RuntimeError(
                f"This sliding-window cache (window {self.window}, {self.prefix} leading tokens kept) has dropped "
                f"tokens older than its window and can roll back only the {self.last_step} tokens of its last "
                f"step, not {remove}. For assisted decoding with 'sliding', use a window that covers the prompt "
                "and the generated tokens, or generate without an assistant model."
            )
        self.keys, self.values = self.keys[..., : held - remove, :], self.values[..., : held - remove, :]
        self.cumulative_length -= remove
        self.last_step = max(0, self.last_step - remove)

    def reset(self) -> None:
        super().reset()
        self.cumulative_length = 0
        self.last_step = 0
        self.ring_start = None


class StaticSinkWindowLayer(StaticLayer):
    """A static cache layer holding ``prefix`` leading slots and a ring of ``window`` slots.

    The buffers never change size or address (CUDA graphs replay the decoding step); the number of tokens
    seen is a tensor, as in transformers' `StaticLayer`. Token ``t`` lives in ring slot ``t % window``, so
    a decoding step writes its one token in place and attends over the buffers themselves: the ring then
    holds exactly the window that token sees (slots not yet written, or holding a token of the prefix, are
    hidden by the attention), and nothing is moved. Attention does not depend on the order of the keys,
    only on their positions, which `context` derives from the tokens seen.

    The first update (the prompt) returns the prompt itself. A later update of several tokens returns the
    prefix, the last ``window - 1`` earlier tokens in order, then the new tokens.
    """

    is_sliding = True
    is_croppable = False

    def __init__(self, max_cache_len: int, window: int, prefix: int = 0):
        super().__init__(max_cache_len=max_cache_len)
        self.window = window
        self.prefix = prefix
        self.written = False
        self.prefix_filled = prefix == 0
        self.tokens_before_filled = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocate the buffers (``prefix + window`` slots) and mark their sizes static for the compiler: a
        process that compiled a decoding step over buffers of another size (a static cache of another
        length, another window) would otherwise compile this one with symbolic buffer lengths, which
        inductor's CUDA-graph partitions failed to bind (torch 2.11: ``NameError: name 's65' is not
        defined``), and which no step needs: the buffers never change size."""
        held = self.max_cache_len
        self.max_cache_len = self.prefix + self.window
        super().lazy_initialization(key_states, value_states)
        self.max_cache_len = held
        if not torch.compiler.is_compiling():
            torch._dynamo.mark_static(self.keys)
            torch._dynamo.mark_static(self.values)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if not self.written:
            self.written = True
            self._write(key_states, value_states)
            return key_states, value_states
        if new == 1:
            self._write(key_states, value_states)
            return self.keys, self.values
        earlier = self._earlier_in_order()
        keys = torch.cat([self.keys[..., : self.prefix, :], self.keys.index_select(-2, earlier), key_states], dim=-2)
        values = torch.cat(
            [self.values[..., : self.prefix, :], self.values.index_select(-2, earlier), value_states], dim=-2
        )
        self._write(key_states, value_states)
        return keys, values

    def _earlier_in_order(self) -> torch.Tensor:
        """Ring slots of the last ``window - 1`` tokens before the update, oldest first (slots of tokens
        before the stream began hold zeros or older tokens: their positions say so, the attention hides them)."""
        device = self.keys.device
        earlier = self.cumulative_length - (self.window - 1) + torch.arange(self.window - 1, device=device)
        return self.prefix + earlier.remainder(self.window)

    def _write(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Write new tokens in place: those still inside the prefix into their slots, the last ``window``
        of them into their ring slots.

        Whether the prefix still has empty slots is a host fact (`prefix_filled`, from the token counts of
        the updates, which are shapes), so once the prompt has filled it a decoding step writes its ring
        slot alone instead of rewriting every prefix slot with itself. The count stops once the prefix is
        full, so a compiled step guards on the flag, which changes once, and not on a growing number."""
        new = key_states.shape[-2]
        start = self.cumulative_length
        device = key_states.device
        if not self.prefix_filled:
            slots = torch.arange(self.prefix, device=device)
            source = (slots - start).clamp(0, new - 1)
            fresh = ((slots >= start) & (slots < start + new))[:, None]
            for buffer, states in ((self.keys, key_states), (self.values, value_states)):
                prefix = buffer[..., : self.prefix, :]
                prefix.copy_(torch.where(fresh, states.index_select(-2, source), prefix))
            self.tokens_before_filled += new
            self.prefix_filled = self.tokens_before_filled >= self.prefix
        kept = min(new, self.window)
        offsets = torch.arange(new - kept, new, device=device)
        slots = self.prefix + (start + offsets).remainder(self.window)
        for buffer, states in ((self.keys, key_states), (self.values, value_states)):
            buffer.index_copy_(-2, slots, states[..., new - kept :, :])
        self.cumulative_length.add_(new)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.max_cache_len, 0

    def get_max_length(self) -> int:
        return self.max_cache_len

    get_max_cache_shape = get_max_length  # the name before transformers 5.14

    def crop(self, tokens: int) -> None:
        raise RuntimeError(
            "A static sliding-window cache writes its window in place and cannot roll back; for assisted decoding "
            "with 'sliding' use the default (dynamic) cache."
        )

    def reset(self) -> None:
        super().reset()
        self.written = False
        self.prefix_filled = self.prefix == 0
        self.tokens_before_filled = 0


def _self_attention_cache(cache: object) -> Cache | None:
    if isinstance(cache, EncoderDecoderCache):
        return cache.self_attention_cache
    return cache if isinstance(cache, Cache) else None


class BoundedCacheInstaller:
    """Forward pre-hook on the first bounded attention module of a stack (`patch_model` registers it):
    gives every bounded module of the stack the cache layer its variant asks for, before any of them
    updates the cache.

    One hook per stack, not one per module: a module with a hook leaves `nn.Module`'s fast call path,
    which costs every decoding step host time in every layer. Layers run in order, so the first
    module's hook sees the cache before the others write to it.
    """

    def __init__(self, modules: list[nn.Module]):
        self.modules = sorted(modules, key=lambda module: module.layer_idx)

    @property
    def first(self) -> nn.Module:
        """The module the hook goes on."""
        return self.modules[0]

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        cache = _self_attention_cache(cache_argument(kwargs))
        if cache is None or not hasattr(cache, "layers"):
            return
        mask = kwargs.get("attention_mask")
        read: list[int] = []  # one host read at most, whatever the number of layers, and only to install

        def padding_end() -> int:
            if not read:
                read.append(_padding_end(mask))
            return read[0]

        for bounded in self.modules:
            _install(cache, bounded, padding_end)


def _install(cache: Cache, module: nn.Module, padding_end: Callable[[], int]) -> None:
    """Give ``module``'s slot of ``cache`` the bounded layer its variant asks for, unless it holds tokens;
    ``padding_end()`` is `_padding_end` of the call's mask."""
    variant = module._modules["efficient_attn"]
    window = variant.cache_window()
    index = module.layer_idx
    current = cache.layers[index] if index < len(cache.layers) else None
    if isinstance(current, (SinkWindowCacheLayer, StaticSinkWindowLayer)):
        return
    if current is not None and current.is_initialized:
        return  # it holds tokens already: keep it (exact, only not bounded)
    sinks = variant.options.sink_tokens
    if isinstance(current, StaticLayer) and getattr(current, "is_sliding", False):
        if not sinks:
            return  # transformers' static sliding layer keeps the model's own window: every key the layer sees
        raise ValueError(
            f"Layer {index} has the model's own sliding window, and transformers' static cache keeps its latest "
            f"{current.max_cache_len} keys there in an order the sink tokens of `{variant.name}` cannot be placed "
            "in. Generate with the default dynamic cache on this model, or patch with sink_tokens=0."
        )
    prefix = sinks + padding_end() if sinks else 0  # every row keeps its own first real tokens
    if isinstance(current, StaticLayer):
        if prefix + window < current.max_cache_len:
            cache.layers[index] = StaticSinkWindowLayer(current.max_cache_len, window, prefix)
        return
    bounded = SinkWindowCacheLayer(window, prefix)
    padded = padding_end()
    if padded:
        bounded.in_order_until = padded + window
    if current is not None:
        if type(current) not in PLAIN_LAYERS:
            _warn_replaced(variant.name, type(current).__name__, window)
        cache.layers[index] = bounded
        return
    if getattr(cache, "layer_class_to_replicate", None) is None:
        return
    while len(cache.layers) < index:
        cache.layers.append(cache.layer_class_to_replicate())
    cache.layers.append(bounded)


PLAIN_LAYERS = (DynamicLayer, DynamicSlidingWindowLayer)
"""Growing layers that hold keys and values as they come, which a bounded layer replaces without a word."""

_REPLACED: set[tuple[str, str]] = set()


def _warn_replaced(variant_name: str, layer_name: str, window: int) -> None:
    """Say once that a growing layer of another kind (a quantized one, say) gave way to the bounded layer."""
    if tracing() or (variant_name, layer_name) in _REPLACED:
        return
    _REPLACED.add((variant_name, layer_name))
    warnings.warn(
        f"`{variant_name}` replaces the cache's {layer_name} layers with its sink+window layers (window {window}): "
        f"they hold the keys and values attention can still see, in the model's dtype, so the cache stops growing, "
        f"and what {layer_name} does besides (quantization, for one) no longer applies.",
        UserWarning,
        stacklevel=4,
    )


def _padding_end(mask: object) -> int:
    """Pad tokens before the first real token in the most left-padded row (0 without padding): the prefix
    keeps them with the sinks so that every row keeps its own sinks, and the growing layer keeps its
    tokens in order until they have left the window. Read on the host once per generation (the cache is
    installed once). When the first forward of a generation is itself compiled, it cannot be read, and
    every token of the prompt that may be padding counts instead: exact still, bounded by the prompt
    rather than the padding (`generate()` runs the prompt eagerly for static caches, which avoids it)."""
    if not is_layout(mask):
        return 0
    layout = read_layout(mask)
    if layout.padding is None:
        return 0
    if tracing():
        return layout.tokens - 1
    return int(first_true_index(layout.padding).max())
