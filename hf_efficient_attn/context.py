"""What one attention call knows about its tokens: positions, padding, documents, causality.

Transformers hands an attention function `query`, `key`, `value` and whatever the mask policy built
(`AttentionLayout`, see `mask_policy.py`). Variants need more than that: the absolute position of each
query and each key (a sliding-window KV cache keeps only some keys, so key ``j`` is not position ``j``),
which keys are padding, where packed documents start, and whether the layer is causal. `AttentionContext`
gathers these once per call so that every variant reads the same facts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .tensor_memo import TensorMemo


@dataclass(frozen=True)
class AttentionLayout:
    """The compact mask a model builds once per forward: no N×N tensor, only what padding needs.

    Attributes:
        padding: bool ``[batch, tokens_seen]``, True for real tokens, over every token seen so far
            (past and present), or None when there is no padding.
        query_offset: absolute position of the first query token (tokens already in the cache).
    """

    padding: torch.Tensor | None
    query_offset: int
    _row_starts: dict[torch.device, torch.Tensor | None] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def row_starts(self, device: torch.device) -> torch.Tensor | None:
        """Each row's first real token (long ``[batch]``, on ``device``), or None when no row is
        left-padded. Whether any is needs a host read: it happens once per layout, which the model builds
        once per forward and hands to every layer (inference mode included)."""
        if device not in self._row_starts:
            starts = _first_true_index(self.padding.to(device=device, dtype=torch.bool))
            self._row_starts[device] = starts if bool(starts.any()) else None
        return self._row_starts[device]

    def leading_padding(self) -> int:
        """Largest number of pad tokens before the first real token in any row (left padding)."""
        if self.padding is None:
            return 0
        first_real = _first_true_index(self.padding)
        return int(first_real.max().item())


@dataclass(frozen=True)
class AttentionContext:
    """Everything a variant needs to know about one attention call.

    Attributes:
        query_positions: long ``[q_len]``, absolute position of each query token.
        key_positions: long ``[k_len]``, absolute position of each key (ascending).
        key_padding: bool ``[batch, k_len]``, True for real keys, or None.
        sequence_start: long ``[batch]``, position of each row's first real token, or None when every
            row starts with a real token.
        query_documents / key_documents: long ``[batch, len]`` document ids for packed sequences, or None.
        dense_mask: bool ``[batch|1, heads|1, q_len, k_len]`` given by the caller as a 4-D mask, or None.
        causal: whether a query may only see keys at or before its own position.
        scaling: factor applied to ``q @ k^T``.
        dropout: attention dropout probability (already 0 outside training).
        native_window: the model's own sliding window (e.g. Mistral's), counted like ours, or None.
        query_offset: absolute position of the first query (host-side copy of ``query_positions[0]``).
        trimmed_prefix: when a bounded cache dropped middle tokens, how many leading keys come before
            the gap (the rest is a contiguous tail ending at the newest token); None when key ``j`` is
            token ``j``.
    """

    query_positions: torch.Tensor
    key_positions: torch.Tensor
    key_padding: torch.Tensor | None
    sequence_start: torch.Tensor | None
    query_documents: torch.Tensor | None
    key_documents: torch.Tensor | None
    dense_mask: torch.Tensor | None
    causal: bool
    scaling: float
    dropout: float
    native_window: int | None
    query_offset: int = 0
    trimmed_prefix: int | None = None


def _first_true_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the first True in each row (the row length when a row has none)."""
    length = mask.shape[-1]
    positions = torch.arange(length, device=mask.device).expand_as(mask)
    return torch.where(mask, positions, length).amin(dim=-1)


def key_positions_for(
    key_length: int, tokens_seen: int, retained_prefix: int, device: torch.device
) -> torch.Tensor:
    """Absolute positions of the keys a cache returned.

    A cache either returns every token seen (``key_length >= tokens_seen``; a static cache may return
    more slots than tokens, the extra ones lie in the future and causality hides them), or it trimmed the
    middle: it kept the first ``retained_prefix`` tokens (attention sinks) and a contiguous tail that ends
    at the newest token.
    """
    if key_length >= tokens_seen:
        return torch.arange(key_length, device=device)
    if retained_prefix > key_length:
        raise ValueError(
            f"The cache returned {key_length} keys but should keep {retained_prefix} leading tokens; "
            "it was not built for this layer's variant. Pass past_key_values=None and let the model build it."
        )
    tail = key_length - retained_prefix
    return torch.cat(
        [
            torch.arange(retained_prefix, device=device),
            torch.arange(tokens_seen - tail, tokens_seen, device=device),
        ]
    )


def documents_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Document ids of packed sequences (positions restart at each document), or None when unpacked."""
    first = position_ids[:, :1] - 1
    starts = torch.diff(position_ids, prepend=first, dim=-1) != 1
    documents = starts.cumsum(-1)
    if bool((documents[:, -1] == 0).all()):
        return None
    return documents


def build_context(
    *,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: object,
    causal: bool,
    scaling: float,
    dropout: float,
    retained_prefix: int,
    position_ids: torch.Tensor | None,
    native_window: int | None,
) -> AttentionContext:
    """Derive positions, padding and documents for one call from what transformers passed in."""
    batch, q_len, k_len = query.shape[0], query.shape[-2], key.shape[-2]
    device = query.device
    layout = attention_mask if isinstance(attention_mask, AttentionLayout) else None
    dense_mask = _as_bool_mask(attention_mask) if isinstance(attention_mask, torch.Tensor) else None

    query_offset = 0
    trimmed_prefix = None
    if not causal:
        query_positions = torch.arange(q_len, device=device)
        key_positions = torch.arange(k_len, device=device)
        tokens_seen = k_len
    else:
        query_offset = layout.query_offset if layout is not None else k_len - q_len
        tokens_seen = query_offset + q_len
        query_positions = torch.arange(query_offset, tokens_seen, device=device)
        key_positions = key_positions_for(k_len, tokens_seen, retained_prefix, device)
        if k_len < tokens_seen:
            trimmed_prefix = retained_prefix

    key_padding = None
    sequence_start = None
    padding = layout.padding if layout is not None else None
    if padding is not None:
        padding = padding.to(device=device, dtype=torch.bool)
        if padding.shape[-1] == k_len and (not causal or k_len >= tokens_seen):
            key_padding = padding
        elif padding.shape[-1] >= tokens_seen:
            key_padding = padding[:, key_positions.clamp(max=padding.shape[-1] - 1)]
        else:
            raise ValueError(
                f"attention_mask covers {padding.shape[-1]} tokens but this call sees {tokens_seen}; "
                "pass a mask over every token, past and present (as generate() does)."
            )
        # the newest key is known on the host (a GPU read here would wait in every layer)
        newest_key = max(k_len, tokens_seen) - 1
        if k_len and newest_key >= padding.shape[-1]:
            key_padding = key_padding & (key_positions < padding.shape[-1])
        sequence_start = layout.row_starts(device)

    query_documents = key_documents = None
    if causal and padding is None and dense_mask is None and position_ids is not None and q_len == k_len:
        # every layer of one forward gets the same position_ids: one host read per forward, not per layer
        query_documents = key_documents = _DOCUMENTS.get(
            position_ids, (batch, device), lambda: documents_from_position_ids(_batched(position_ids, batch, device))
        )

    return AttentionContext(
        query_positions=query_positions,
        key_positions=key_positions,
        key_padding=key_padding,
        sequence_start=sequence_start,
        query_documents=query_documents,
        key_documents=key_documents,
        dense_mask=dense_mask,
        causal=causal,
        scaling=scaling,
        dropout=dropout,
        native_window=native_window,
        query_offset=query_offset,
        trimmed_prefix=trimmed_prefix,
    )


_DOCUMENTS: TensorMemo[torch.Tensor | None] = TensorMemo()
"""Document ids (or None) per position_ids tensor, batch size and device."""


def _batched(position_ids: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    ids = position_ids.to(device)
    return ids if ids.shape[0] == batch else ids.expand(batch, -1)


def _as_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """A caller's 4-D mask as bool (True = may attend); additive float masks use 0 for visible."""
    if mask.dim() != 4:
        raise ValueError(f"Expected a 4-D attention mask [batch, heads, q_len, k_len], got shape {tuple(mask.shape)}.")
    if mask.dtype == torch.bool:
        return mask
    return mask == 0
