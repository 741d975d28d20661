"""The attention function and mask policy this library registers with transformers.

Transformers looks both up by ``config._attn_implementation``. `patch_model` sets it to
`IMPLEMENTATION_NAME`, so every attention call of the model lands in `efficient_attention_forward`,
which runs the variant attached to the calling module (or exact attention for modules left
unpatched). The mask policy `efficient_attention_mask` replaces transformers' dense masks with a
`layout`: which token positions are real and, for static caches, where the queries sit; nothing N×N.
Without that policy transformers would hand a custom attention function ``attention_mask=None`` and
padding would leak.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from .compat import query_offset_tensor
from .context import tensor_signature, tracing
from .context_memo import ContextMemo
from .layout import is_layout, make_layout
from .replay import ReplayMemo
from .variants.base import AttentionVariant

IMPLEMENTATION_NAME = "hf_efficient_attn"
VARIANT_ATTRIBUTE = "efficient_attn"
_CONTEXTS = ContextMemo()
"""The contexts of the current forward's calls (`context_memo`): derived in its first layer, shared by the rest."""
_PLANS = ReplayMemo()
"""The planned calls of the current forward (`replay`): made in its first layer, run by the rest."""


def efficient_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Transformers' attention-function protocol: ``[b, heads, len, dim]`` in, ``[b, len, heads, dim]`` out.

    Under a LoRA recipe the attached variant sits in PEFT's ``modules_to_save`` wrapper, which passes
    calls and attribute reads on to the copy it trains (or to the original with adapters disabled).
    """
    variant: AttentionVariant | None = module._modules.get(VARIANT_ATTRIBUTE)  # `getattr` costs a microsecond
    if variant is None:
        variant = _exact_attention()
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    query, key, value = _autocast_inputs(query, key, value)
    causal = bool(getattr(module, "is_causal", False))
    dropout = dropout if module.training else 0.0
    position_ids, native_window = kwargs.get("position_ids"), kwargs.get("sliding_window")
    replay_key = _replay_key(variant, query, key, value, causal, scaling, dropout, position_ids, native_window)
    if replay_key is not None:
        kept = _PLANS.get(attention_mask, replay_key)
        if kept is not None:  # a later layer of this forward: the call the first one planned
            keys_seen, plan = kept
            if keys_seen < key.shape[-2]:
                key, value = key[..., :keys_seen, :], value[..., :keys_seen, :]
            return plan(query, key, value).transpose(1, 2).contiguous(), None
    context = _CONTEXTS.get(
        query=query,
        key=key,
        attention_mask=attention_mask,
        causal=causal,
        scaling=scaling,
        dropout=dropout,
        cache_window=variant.cache_window(),
        position_ids=position_ids,
        native_window=native_window,
    )
    keys_seen = context.key_positions.shape[0]
    if keys_seen < key.shape[-2]:
        key, value = key[..., :keys_seen, :], value[..., :keys_seen, :]
    plan = None if replay_key is None else variant.plan(query, key, value, context)
    if plan is None:
        output = variant(query, key, value, context)
    else:
        if is_layout(attention_mask) or (attention_mask is None and position_ids is None):
            _PLANS.put(attention_mask, replay_key, keys_seen, plan)  # a caller's own mask may change: never a key
        output = plan(query, key, value)
    return output.transpose(1, 2).contiguous(), None


def _replay_key(
    variant: AttentionVariant,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    causal: bool,
    scaling: float,
    dropout: float,
    position_ids: torch.Tensor | None,
    native_window: int | None,
) -> tuple | None:
    """Everything a call's plan depends on besides the layout (`replay`); None where plans are not shared:
    under tracing, for variants without plans, and where hooks on the variant module must see its calls."""
    if variant.plan_group is None or variant._forward_hooks or variant._forward_pre_hooks or tracing():
        return None
    return (
        variant.plan_group,
        variant.training,
        causal,
        scaling,
        dropout,
        native_window,
        None if position_ids is None else id(position_ids),  # alive for the whole forward: no reuse
        torch.is_inference_mode_enabled(),
        *tensor_signature(query, key, value),
    )


def _autocast_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Under ``torch.autocast``, float32 inputs in the autocast dtype, as SDPA takes them.

    Mixed-precision training leaves the rotated queries and keys in float32 (the rotary tables follow
    the float32 residual stream) while the value projection comes out in half precision, and a cache
    may promote values too. SDPA, which the unpatched model calls, casts all three to the autocast
    dtype; doing the same keeps the patched model's numerics alike and lets the half-precision kernels
    run instead of float32 ones.
    """
    if torch.float32 not in (query.dtype, key.dtype, value.dtype):
        return query, key, value  # nothing to cast (checked first: this runs in every layer)
    device_type = query.device.type
    if not torch.is_autocast_enabled(device_type):
        return query, key, value
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t.dtype == torch.float32 else t for t in (query, key, value))


def efficient_attention_mask(
    batch_size: int,
    q_length: int | None = None,
    kv_length: int | None = None,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Transformers' mask-function protocol: the padding over every token position and, for static
    caches, where the queries are (see `layout`).

    ``kv_offset + kv_length`` is the number of positions the keys span (every token seen so far, or a
    static cache's slots). The queries are its last positions, unless the query offset says otherwise: a
    tensor (a static cache, decoding) or a host 0 with fewer queries than positions (a prompt entering a
    fresh static cache, or cross-attention, which ignores query positions). In eager mode an all-real
    padding mask is dropped after one host read per forward, as transformers' SDPA path does; under
    ``torch.compile`` it is kept.
    """
    tokens = kv_offset + (kv_length if kv_length is not None else attention_mask.shape[-1])
    query_start = query_offset_tensor(q_offset)
    padding = attention_mask
    if padding is not None and padding.dim() != 2:
        raise ValueError(
            f"The attention mask must be 2-D [batch, tokens] (1 for real tokens), got shape {tuple(padding.shape)}."
        )
    queries_first = False
    if query_start is None and q_length is not None and q_offset + q_length < tokens:
        if q_offset == 0:
            queries_first = True
        else:
            query_start = torch.tensor(q_offset, dtype=torch.long, device=kwargs.get("device"))
    if padding is not None and query_start is None and not tracing() and bool(padding.all()):
        padding = None
    return make_layout(
        tokens=tokens,
        padding=padding,
        query_start=query_start,
        query_length=q_length or 0,
        queries_first=queries_first,
        device=kwargs.get("device"),
    )


_EXACT: list[AttentionVariant] = []


def _exact_attention() -> AttentionVariant:
    """The shared exact variant that unpatched modules of a patched model run."""
    if not _EXACT:
        from .variants.base import LayerInfo, Role
        from .variants.flash import FlashAttention, FlashOptions

        _EXACT.append(FlashAttention(FlashOptions(), LayerInfo(Role.CAUSAL, "any", -1, 1, 1, 1)))
    return _EXACT[0]


def register() -> None:
    """Register the attention function and mask policy with transformers (idempotent), and build the exact
    variant of unpatched modules now rather than in a first call that `torch.compile` may be tracing."""
    AttentionInterface.register(IMPLEMENTATION_NAME, efficient_attention_forward)
    AttentionMaskInterface.register(IMPLEMENTATION_NAME, efficient_attention_mask)
    _exact_attention()
