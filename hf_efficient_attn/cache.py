"""A bounded KV cache for windowed attention, and the hook that puts it in place during generation.

With a causal sliding window of W keys (counting the query itself), a new token can only ever see
the W-1 tokens before it, plus any attention sinks. `SinkWindowCacheLayer` keeps exactly those, so a
layer's cache stops growing once it holds ``prefix + W - 1`` tokens, whatever the generated length.

Transformers builds the cache before the first forward (`generate()` or the model itself), knowing
nothing of our variants. A forward pre-hook on each patched attention module swaps that layer's slot
in the cache for a bounded layer the first time it is seen empty; later steps find it in place.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicLayer, EncoderDecoderCache

from .context import AttentionLayout


class SinkWindowCacheLayer(DynamicLayer):
    """Keeps the first ``prefix`` tokens (sinks, plus any left padding before them) and the last ``window - 1``.

    `update` returns every cached key plus the new ones (the current step needs them all), then trims.
    `get_seq_length` counts all tokens ever seen, which is what positions and masks are built from.
    """

    is_sliding = True
    is_croppable = False

    def __init__(self, window: int, prefix: int = 0):
        super().__init__()
        self.window = window
        self.prefix = prefix
        self.cumulative_length = 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        full_keys = torch.cat([self.keys, key_states], dim=-2)
        full_values = torch.cat([self.values, value_states], dim=-2)
        self.keys, self.values = self._trim(full_keys), self._trim(full_values)
        return full_keys, full_values

    def _trim(self, states: torch.Tensor) -> torch.Tensor:
        recent = self.window - 1
        if states.shape[-2] <= self.prefix + recent:
            return states
        tail = states[..., states.shape[-2] - recent :, :] if recent > 0 else states[..., :0, :]
        return torch.cat([states[..., : self.prefix, :], tail], dim=-2)

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        kept = 0 if self.keys is None else self.keys.shape[-2]
        return kept + query_length, 0

    def get_max_length(self) -> int:
        return self.prefix + self.window - 1

    def crop(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "A sliding-window cache has dropped old tokens and cannot be cropped; "
            "disable assisted decoding or use the `full` variant."
        )


def _self_attention_cache(cache: object) -> Cache | None:
    if isinstance(cache, EncoderDecoderCache):
        return cache.self_attention_cache
    return cache if isinstance(cache, Cache) else None


def install_bounded_cache(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook: give this module's cache slot the bounded layer its variant asks for."""
    variant = getattr(module, "efficient_attn", None)
    # transformers 5.24 passes the cache as ``cache=`` (``past_key_values=`` before, deprecated since)
    cache = _self_attention_cache(kwargs.get("cache", kwargs.get("past_key_values")))
    if variant is None or cache is None or not hasattr(cache, "layers"):
        return
    layout = kwargs.get("attention_mask")
    layout = layout if isinstance(layout, AttentionLayout) else None
    layer_index = module.layer_idx
    if layer_index < len(cache.layers):
        current = cache.layers[layer_index]
        if isinstance(current, SinkWindowCacheLayer) or current.get_seq_length() > 0:
            return
    bounded = variant.make_cache_layer(layout)
    if bounded is None:
        return
    if layer_index >= len(cache.layers):
        if getattr(cache, "layer_class_to_replicate", None) is None:
            return
        while len(cache.layers) < layer_index:
            cache.layers.append(cache.layer_class_to_replicate())
        cache.layers.append(bounded)
    else:
        cache.layers[layer_index] = bounded
