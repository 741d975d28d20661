"""Positions inside the cache (StreamingLLM): a bounded sliding-window cache that outlives the trained context.

A rotary model that reads a long stream through a sink+window cache (`cache.SinkWindowCacheLayer`) still
rotates each new token by its position in the text, and past the last position it was trained on it
degrades, although no query ever sees more than ``prefix + window`` keys. StreamingLLM gives every cached
key its index in the cache instead: the sinks sit at ``0 .. prefix - 1``, the window right after them and
the new tokens after the window, so the positions stay below ``prefix + window + chunk`` whatever the
length of the text.

`CachePositionedLayer` keeps its keys un-rotated and hands the attention each key rotated by its index in
what the step sees; the caller rotates the new tokens by their indices (`stream_position_ids`, passed as
``position_ids``), which is where they land. Rotating kept keys by the shift from step to step instead
would round them again at every step (in bfloat16 a key that stays a thousand steps would drift); here
each is rotated once from its stored form. Which keys a query sees is unchanged: the attention masks by
position in the text (`context`), so sinks and the window are the same keys as without this layer.

A chunk of several tokens takes the positions after the window, so its later queries see the sinks a
few positions farther away than a stream read token by token would place them (at most the chunk size,
well under the window); within the window, distances are those of the text.

`streaming_cache` builds such a cache for a model patched with causal `sliding` in every layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from .cache import SinkWindowCacheLayer
from .errors import VariantError
from .interface import VARIANT_ATTRIBUTE


def rotate(states: torch.Tensor, positions: torch.Tensor, inverse_frequencies: torch.Tensor) -> torch.Tensor:
    """``states`` ``[batch, heads, len, head_dim]`` rotated as transformers' Llama rotary embedding rotates a
    token at each of ``positions`` (``[len]``; negative values undo a rotation). The angles are float32
    products, as transformers computes them, so that undoing its rotation uses the very same angles
    (float64 states keep float64)."""
    dtype = torch.float64 if states.dtype == torch.float64 else torch.float32
    angles = positions.to(dtype)[:, None] * inverse_frequencies.to(states.device, dtype)[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos(), angles.sin()
    x = states.to(dtype)
    half = x.shape[-1] // 2
    rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated_half * sin).to(states.dtype)


class CachePositionedLayer(SinkWindowCacheLayer):
    """A sink+window cache layer whose keys take their index in the cache as their rotary position.

    New keys must come rotated by `next_position` onwards (`stream_position_ids`); they are stored
    un-rotated, and each step returns every key rotated by its index in the returned tensor.
    """

    writes_in_place = False  # keys take their index in the returned tensor as position

    def __init__(self, window: int, prefix: int, inverse_frequencies: torch.Tensor):
        super().__init__(window, prefix)
        self.inverse_frequencies = inverse_frequencies

    @property
    def next_position(self) -> int:
        """Index in the cache, and so the rotary position, that the next token takes."""
        if not self.is_initialized or self.keys.dim() < 2:
            return 0
        return min(self.keys.shape[-2], self.capacity)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.next_position
        arriving = torch.arange(first, first + key_states.shape[-2], device=key_states.device)
        unrotated = rotate(key_states, -arriving, self.inverse_frequencies)
        keys, values = super().update(unrotated, value_states, *args, **kwargs)
        indices = torch.arange(keys.shape[-2], device=keys.device)
        return rotate(keys, indices, self.inverse_frequencies), values


def streaming_cache(model: nn.Module) -> DynamicCache:
    """A fresh cache for ``model`` whose layers give keys their index in the cache as position.

    Raises:
        VariantError: unless every decoder layer runs causal `sliding` (one position per token must hold
            for all layers) and the model has a Llama-style rotary embedding.
    """
    layers = _decoder_attention(model)
    bounded = bounded_everywhere(model)
    if bounded is None:
        raise VariantError(
            "Positions inside the cache need every decoder layer patched with causal 'sliding' (one window and "
            "sink count for all): patch_model(model, 'sliding', window=..., sink_tokens=...) without `layers=`."
        )
    window, sinks = bounded
    rotary = getattr(model.base_model, "rotary_emb", None)
    frequencies = getattr(rotary, "inv_freq", None)
    if not isinstance(frequencies, torch.Tensor):
        raise VariantError(
            f"{type(model).__name__} has no Llama-style rotary embedding (`rotary_emb.inv_freq`) to place keys "
            "inside the cache by; stream with positions='text'."
        )
    cache = DynamicCache(config=model.config)
    cache.layers[:] = [CachePositionedLayer(window, sinks, frequencies) for _ in layers]
    return cache


def bounded_everywhere(model: nn.Module) -> tuple[int, int] | None:
    """``(window, sink_tokens)`` when every decoder layer of ``model`` runs causal `sliding` with the same
    window and sinks (so one position per token holds for every layer), else None."""
    try:
        layers = _decoder_attention(model)
    except VariantError:
        return None
    variants = [getattr(module, VARIANT_ATTRIBUTE, None) for module in layers]
    windows = {None if v is None or v.cache_window() is None else (v.cache_window(), v.options.sink_tokens)
               for v in variants}
    return next(iter(windows)) if len(windows) == 1 and None not in windows else None


def stream_position_ids(cache: DynamicCache, length: int, device: torch.device) -> torch.Tensor:
    """``position_ids`` ``[1, length]`` of the next ``length`` tokens fed through a `streaming_cache`."""
    first = cache.layers[0].next_position
    return torch.arange(first, first + length, device=device)[None]


def _decoder_attention(model: nn.Module) -> list[nn.Module]:
    layers = getattr(model.base_model, "layers", None)
    if layers is None or not all(hasattr(layer, "self_attn") for layer in layers):
        raise VariantError(
            f"Streaming with positions inside the cache needs a decoder-only Llama-family model, not "
            f"{type(model).__name__}."
        )
    return [layer.self_attn for layer in layers]
