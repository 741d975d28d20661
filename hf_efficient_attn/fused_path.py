"""Run one attention call on the fused Triton kernels when they compute exactly what the reference does.

`flash`, `sliding` and `sparse` are all exact softmax attention under a mask, so the fused kernels
(`hf_efficient_attn.kernels`) and the chunked reference engine (`masked.masked_attention`) give the
same result to rounding. The kernels index keys by their place in the key tensor and align the last
query with the last key; a variant states its pattern in those terms as a `KernelMask`, and
`attention` checks that this call's facts (key positions, padding, packed documents, a caller's mask,
dropout, dtype, head size, device) let the kernels reproduce the reference. If they do it runs the
decode kernel (a few queries against a long cache, no gradient needed), the varlen kernel (packed
documents) or the dense kernel; otherwise the reference.

Backends, chosen per variant with ``backend=``:

* ``"auto"`` (default): the kernels on CUDA when the call allows, else the reference, with a one-time
  warning per reason (on the CPU the reference is the expected path and nothing is said);
* ``"triton"``: the kernels, or a `FusedPathError` that says why not (also on the CPU under
  ``TRITON_INTERPRET=1``);
* ``"reference"``: always the reference.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from .context import AttentionContext
from .variants.base import VariantError

Backend = Literal["auto", "triton", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "reference")
DECODE_MAX_QUERIES = 16
"""Calls with at most this many queries (and no gradient) use the split-key decode kernel when they can."""


class FusedPathError(VariantError):
    """``backend="triton"`` was asked for a call the fused kernels cannot compute exactly."""


class FusedPathFallbackWarning(UserWarning):
    """``backend="auto"`` on CUDA fell back to the (exact, slower) reference path."""


@dataclass(frozen=True)
class KernelMask:
    """A variant's pattern in the kernels' terms (see `kernels.fused_attention`).

    Attributes:
        window: ``(left, right)``: query at index ``p`` sees key ``j`` when ``p - j < left`` and
            ``j - p < right``; None leaves that side unbounded.
        sink_tokens: keys ``j < sink_tokens`` bypass the window.
        global_tokens: keys and queries with index below it bypass the window.
        block_layout: bool ``[1|heads, query_blocks, key_blocks]``, or None for no layout.
        layout_block_size: tokens per layout block.
    """

    window: tuple[int | None, int | None] = (None, None)
    sink_tokens: int = 0
    global_tokens: int = 0
    block_layout: torch.Tensor | None = None
    layout_block_size: int = 64

    def counts_from_row_start(self) -> bool:
        """Whether the pattern is anchored at the first token (sinks, globals, blocks)."""
        return bool(self.sink_tokens or self.global_tokens or self.block_layout is not None)


def check_backend(backend: object) -> None:
    """Raise `VariantError` unless ``backend`` is one of `BACKENDS`."""
    if backend not in BACKENDS:
        raise VariantError(f"`backend` must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}.")


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    *,
    backend: Backend,
    kernel_mask: Callable[[], KernelMask | str],
    reference: Callable[[], torch.Tensor],
    variant_name: str,
) -> torch.Tensor:
    """The call's attention output ``[batch, q_heads, q_len, head_dim]`` from the chosen path.

    Args:
        query, key, value, context: as a variant's forward receives them.
        backend: ``"auto"``, ``"triton"`` or ``"reference"`` (see the module docstring).
        kernel_mask: gives the variant's pattern for the kernels, or the reason it has none (only called
            when the kernels are considered).
        reference: computes the same result on the reference engine.
        variant_name: named in warnings and errors.
    """
    if backend == "reference" or (backend == "auto" and not kernels_preferred(query.device)):
        return reference()
    plan = _plan(query, key, value, context, kernel_mask())
    if isinstance(plan, str):
        if backend == "triton":
            raise FusedPathError(
                f"Variant '{variant_name}' with backend='triton' cannot run this call on the fused kernels: "
                f"{plan}. Use backend='auto' (falls back to the exact reference path) or backend='reference'."
            )
        _warn_once(variant_name, plan)
        return reference()
    return plan()


def kernels_preferred(device: torch.device) -> bool:
    """Whether ``backend="auto"`` considers the kernels on this device (CUDA: yes; the CPU: no)."""
    return device.type == "cuda"


def _plan(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    context: AttentionContext,
    mask: KernelMask | str,
) -> Callable[[], torch.Tensor] | str:
    """A zero-argument function running the right kernel, or why no kernel computes this call exactly."""
    from . import kernels

    if isinstance(mask, str):
        return mask
    reason = kernels.supports(query, key, value, scale=context.scaling)
    if reason is not None:
        return reason
    if context.dropout > 0:
        return "attention dropout is applied on the reference path only (set the model's attention dropout to 0)"
    if context.dense_mask is not None:
        return "a 4-D attention mask was given by the caller"
    aligned = _align_keys(key, value, context, mask)
    if isinstance(aligned, str):
        return aligned
    key, value, key_padding = aligned
    mask = _with_native_window(mask, context)
    if isinstance(mask, str):
        return mask
    if mask.counts_from_row_start() and _has_left_padding(context):
        return "left padding with sink tokens, global tokens or block layouts, which count from each row's first real token"
    if context.query_documents is not None:
        if mask.counts_from_row_start():
            return "packed documents with sink tokens, global tokens or block layouts"
        return lambda: _packed_documents(query, key, value, context, mask)
    if _decodes(query, key, value, context, mask):
        return lambda: kernels.decode_attention(query, key, value, scale=context.scaling, key_padding=key_padding)
    return lambda: kernels.fused_attention(
        query,
        key,
        value,
        scale=context.scaling,
        causal=context.causal,
        window=mask.window,
        sink_tokens=mask.sink_tokens,
        global_tokens=mask.global_tokens,
        block_layout=mask.block_layout,
        layout_block_size=mask.layout_block_size,
        key_padding=key_padding,
    )


def _align_keys(
    key: torch.Tensor, value: torch.Tensor, context: AttentionContext, mask: KernelMask
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | str:
    """Keys, values and key padding in the kernels' index space, or why they cannot be put there.

    Bidirectional calls already are. In causal calls the last query must face the last key: a static
    cache's slots past the newest token are dropped (causality hides them anyway); a bounded cache's
    contiguous tail is aligned by construction, and the leading keys it kept must be the sinks.
    """
    padding = context.key_padding
    if not context.causal:
        return key, value, padding
    tokens_seen = context.query_offset + context.query_positions.shape[0]
    if context.trimmed_prefix is not None:
        if context.trimmed_prefix != mask.sink_tokens:
            return (
                f"the bounded cache kept {context.trimmed_prefix} leading tokens that are not the pattern's "
                f"{mask.sink_tokens} sink tokens (left padding)"
            )
        return key, value, padding
    if key.shape[-2] > tokens_seen:
        key, value = key[..., :tokens_seen, :], value[..., :tokens_seen, :]
        padding = None if padding is None else padding[:, :tokens_seen]
    return key, value, padding


def _with_native_window(mask: KernelMask, context: AttentionContext) -> KernelMask | str:
    """The mask narrowed by the model's own sliding window (e.g. Mistral's), when there is one."""
    native = context.native_window
    if native is None:
        return mask
    if mask.sink_tokens or mask.global_tokens:
        return "the model's own sliding window together with sink or global tokens"
    left, right = mask.window
    left = native if left is None else min(left, native)
    if not context.causal:
        right = native if right is None else min(right, native)
    return KernelMask((left, right), 0, 0, mask.block_layout, mask.layout_block_size)


def _has_left_padding(context: AttentionContext) -> bool:
    """Read from the context, not the GPU: `build_context` leaves ``sequence_start`` None unless a row is
    left-padded (the mask layout reads that once per forward)."""
    return context.sequence_start is not None


def _decodes(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext, mask: KernelMask
) -> bool:
    """Whether the split-key decode kernel (forward only, every earlier key visible) fits this call."""
    if not context.causal or query.shape[-2] > DECODE_MAX_QUERIES or mask.block_layout is not None:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        return False
    left = mask.window[0]
    return left is None or key.shape[-2] - 1 - mask.sink_tokens < left


def _packed_documents(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext, mask: KernelMask
) -> torch.Tensor:
    """Packed documents (positions restarting inside a row) as variable-length sequences."""
    from . import kernels

    batch, heads, length, head_dim = query.shape
    documents = context.query_documents
    starts = torch.ones_like(documents, dtype=torch.bool)
    starts[:, 1:] = documents[:, 1:] != documents[:, :-1]
    offsets = starts.reshape(-1).nonzero().squeeze(-1)
    total = torch.tensor([batch * length], device=offsets.device, dtype=offsets.dtype)
    cumulative = torch.cat([offsets, total]).to(torch.int32)
    longest = int((cumulative[1:] - cumulative[:-1]).max())

    def tokens_first(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(batch * length, x.shape[1], head_dim)

    output = kernels.fused_attention_varlen(
        tokens_first(query),
        tokens_first(key),
        tokens_first(value),
        cumulative,
        cumulative,
        longest,
        longest,
        scale=context.scaling,
        causal=True,
        window=mask.window,
    )
    return output.reshape(batch, length, heads, head_dim).transpose(1, 2)


_WARNED: set[tuple[str, str]] = set()


def _warn_once(variant_name: str, reason: str) -> None:
    if (variant_name, reason) in _WARNED:
        return
    _WARNED.add((variant_name, reason))
    warnings.warn(
        f"Variant '{variant_name}': the fused Triton path cannot run this call exactly ({reason}); using the "
        "exact reference path, which is slower. Pass backend='reference' to choose it without this warning.",
        FusedPathFallbackWarning,
        stacklevel=4,
    )
