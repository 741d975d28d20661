"""What one attention call knows about its tokens: positions, padding, documents, causality.

Transformers hands an attention function `query`, `key`, `value` and whatever the mask policy built (a
`layout`). Variants need more: the absolute position of each query and each key (a bounded KV cache keeps
only some keys, so key ``j`` is not always position ``j``), which keys are padding, where packed documents
start, and whether the layer is causal. `AttentionContext` gathers these once per call so that every
variant and every backend reads the same facts.

Facts come in two kinds, and the split is what keeps the path traceable by ``torch.compile`` and
replayable by CUDA graphs. Host facts (ints and flags: the query offset, a bounded cache's kept prefix,
whether padding may exist) come from shapes and options only. Everything that depends on values
(positions of a static cache, padding, row starts, document ids) is a device tensor. The one exception is
eager mode, where two facts are read on the host once per forward (the mask policy's "no padding" and
`row_starts`' "no row is left-padded"), as transformers' own SDPA path does, so that unpadded calls can
take the fastest exact kernel; under ``torch.compile`` nothing is read and those calls keep their masks.
"""

from __future__ import annotations

import dataclasses

import torch

from .grad_mode import records_grad
from .layout import Layout, is_layout, read_layout
from .tensor_memo import TensorMemo


@dataclasses.dataclass(frozen=True)
class AttentionContext:
    """Everything a variant needs to know about one attention call.

    Attributes:
        query_positions: long ``[q_len]``, absolute position of each query token.
        key_positions: long ``[k_len]``, absolute position of each key (ascending, except in a static
            bounded layer's ring (`cache.StaticSinkWindowLayer`); a growing bounded cache's keys are its
            kept prefix, then a contiguous tail ending at the newest token).
        key_padding: bool ``[batch|1, k_len]``, True for keys that may be seen at all (real tokens,
            written cache slots), or None when every key may.
        sequence_start: long ``[batch]``, position of each row's first real token, or None when no row
            is left-padded.
        query_documents / key_documents: long ``[batch, len]`` document ids for packed sequences, or None.
        dense_mask: bool ``[batch|1, heads|1, q_len, k_len]`` given by the caller as a 4-D mask, or None.
        causal: whether a query may only see keys at or before its own position.
        scaling: factor applied to ``q @ k^T``.
        dropout: attention dropout probability (already 0 outside training).
        native_window: the model's own sliding window (e.g. Mistral's), counted like ours, or None.
        query_offset: host copy of the first query's position; None for static caches, whose positions
            exist on the device only (`query_positions`).
        trimmed_prefix: when a bounded cache dropped middle tokens, how many leading keys come before
            the gap (host int); None when no key is missing.
        max_sequence_start: host bound on `sequence_start` (0 when None), or None when not known on the
            host (under ``torch.compile``).
        routes: the decisions `dispatch` made for this context's calls (the route, and for the kernels
            the planned launch), kept for the other layers of the forward that share it (eager mode only).
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
    query_offset: int | None = 0
    trimmed_prefix: int | None = None
    max_sequence_start: int | None = 0
    routes: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def static(self) -> bool:
        """Whether positions are known on the device only (a static cache replayed by CUDA graphs)."""
        return self.query_offset is None

    @property
    def left_padded(self) -> bool:
        """Whether a row may start after position 0 (host fact: False only when known)."""
        return self.sequence_start is not None

    def first_real_positions(self) -> torch.Tensor:
        """Each row's first real position, long ``[b|1]``: `sequence_start`, or a single 0 when no row is
        left-padded (the positions rules such as sinks count from)."""
        if self.sequence_start is None:
            return torch.zeros(1, dtype=torch.long, device=self.key_positions.device)
        return self.sequence_start


def tracing() -> bool:
    """Whether ``torch.compile`` is tracing this code (no host reads of tensor values then)."""
    return torch.compiler.is_compiling()


def tensor_signature(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple:
    """What a call's planning reads of its tensors: shapes, dtypes, the device, whether autograd records it."""
    return (
        query.shape,
        key.shape,
        value.shape,
        query.dtype,
        key.dtype,
        value.dtype,
        query.device,
        records_grad(query, key, value),
    )


_RANGES: dict[torch.device, torch.Tensor] = {}


def positions(start: int, stop: int, device: torch.device) -> torch.Tensor:
    """``torch.arange(start, stop)`` on ``device``. In eager mode a view of one kept range per device (grown
    to the next power of two), so that the positions of a call cost no kernel launch: a decoding step
    calls this in every layer. Under ``torch.compile`` a plain arange, which the compiler folds."""
    if tracing() or start < 0:
        return torch.arange(start, stop, device=device)
    kept = _RANGES.get(device)
    if kept is None or kept.shape[0] < stop:
        with torch.inference_mode(False):
            kept = _RANGES[device] = torch.arange(1 << max(10, (stop - 1).bit_length()), device=device)
    return kept[start:stop]


def first_true_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the first True in each row (the row length when a row has none)."""
    length = mask.shape[-1]
    positions = torch.arange(length, device=mask.device).expand_as(mask)
    return torch.where(mask, positions, length).amin(dim=-1)


def row_starts(layout: Layout | None, device: torch.device) -> tuple[torch.Tensor | None, int | None]:
    """Each row's first real position (long ``[batch]``) and a host bound on them.

    ``(None, 0)`` when no row is left-padded. In eager mode whether any is, and the largest start, are
    read on the host once per layout (the model builds one per forward and hands it to every layer);
    under ``torch.compile`` the starts stay on the device and the bound is None.
    """
    if layout is None or layout.padding is None:
        return None, 0
    if tracing():
        return first_true_index(layout.padding.to(device)), None
    return _ROW_STARTS.get(layout.source, device, lambda: _read_row_starts(layout.padding.to(device)))


def _read_row_starts(padding: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    starts = first_true_index(padding)
    latest = int(starts.max()) if starts.numel() else 0
    return (starts, latest) if latest > 0 else (None, 0)


_ROW_STARTS: TensorMemo[tuple[torch.Tensor | None, int]] = TensorMemo(by_identity=True)
"""Row starts per layout tensor (made by the mask policy and never modified, so identity suffices)."""


def kept_prefix(key_length: int, query_length: int, cache_window: int | None) -> int:
    """Leading keys a bounded cache kept before its tail, from shapes alone.

    A bounded sink+window cache returns its kept prefix, the last ``cache_window - 1`` earlier tokens and
    the new ones, so the prefix is what remains; a cache without our bounded layer (transformers' own
    sliding layers) returns a contiguous tail and no prefix.
    """
    if cache_window is None:
        return 0
    prefix = key_length - query_length - (cache_window - 1)
    if prefix < 0:
        raise ValueError(
            f"The KV cache returned {key_length} keys for {query_length} queries, fewer than a window of "
            f"{cache_window} needs: it was not built for this layer's variant. Let the model build its cache "
            "(pass no cache object, or a fresh DynamicCache/StaticCache)."
        )
    return prefix


def build_context(
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
    """Derive positions, padding and documents for one call from what transformers passed in.

    Args:
        cache_window: the window of the bounded cache this layer's variant keeps (`sliding` in causal
            layers), or None: it says how to read a cache that returned fewer keys than tokens seen.
    """
    batch, q_len, k_len = query.shape[0], query.shape[-2], key.shape[-2]
    device = query.device
    layout = read_layout(attention_mask) if is_layout(attention_mask) else None
    dense_mask = None
    if isinstance(attention_mask, torch.Tensor) and layout is None:
        dense_mask = _as_bool_mask(attention_mask)
    padding = None if layout is None or layout.padding is None else layout.padding.to(device)
    sequence_start, max_start = row_starts(layout, device)

    query_offset: int | None = 0
    trimmed_prefix = None
    if not causal:
        query_positions = positions(0, q_len, device)
        key_positions = positions(0, k_len, device)
        key_padding = None if padding is None else _bidirectional_padding(padding, k_len)
    elif layout is not None and layout.static:
        query_offset = None
        query_positions, key_positions, key_padding = _static_positions(
            layout, padding, q_len, k_len, cache_window, device
        )
    else:
        if layout is None:
            query_offset = k_len - q_len
        else:
            query_offset = 0 if layout.queries_first else layout.tokens - q_len
        tokens = query_offset + q_len  # every token seen, the queries included
        query_positions = positions(query_offset, tokens, device)
        if k_len >= tokens:
            key_positions = positions(0, k_len, device)
        else:
            trimmed_prefix = kept_prefix(k_len, q_len, cache_window)
            tail = k_len - trimmed_prefix
            key_positions = torch.cat(
                [positions(0, trimmed_prefix, device), positions(tokens - tail, tokens, device)]
            )
        key_padding = None
        if padding is not None:
            key_padding = _causal_padding(padding, key_positions, k_len, tokens)

    query_documents = key_documents = None
    if causal and padding is None and dense_mask is None and position_ids is not None and q_len == k_len:
        query_documents = key_documents = _documents(position_ids, batch, device)

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
        max_sequence_start=max_start,
    )


def drop_future_keys(context: AttentionContext, key_length: int) -> AttentionContext:
    """The context without the key slots past a causal call's newest token (a static cache's slots ahead
    of the prompt it is filled with): no query may see them, and without them queries and keys are
    aligned again, so the call can take SDPA's causal kernels and ours. The caller keeps the first
    ``len(context.key_positions)`` keys. Host arithmetic only."""
    if not context.causal or context.static or context.trimmed_prefix is not None:
        return context
    tokens = context.query_offset + context.query_positions.shape[0]
    if key_length <= tokens:
        return context
    return dataclasses.replace(
        context,
        key_positions=context.key_positions[:tokens],
        key_padding=None if context.key_padding is None else context.key_padding[:, :tokens],
        dense_mask=None if context.dense_mask is None else context.dense_mask[..., :tokens],
    )


def _bidirectional_padding(padding: torch.Tensor, key_length: int) -> torch.Tensor:
    """Key padding of an encoder or cross-attention call: the layout covers exactly its keys."""
    if padding.shape[-1] < key_length:
        raise ValueError(
            f"attention_mask covers {padding.shape[-1]} tokens but this call has {key_length} keys; "
            "pass a mask over every key."
        )
    return padding[:, :key_length]


def _causal_padding(
    padding: torch.Tensor, key_positions: torch.Tensor, key_length: int, tokens: int
) -> torch.Tensor:
    """Key padding of a causal call from the mask over (at least) every token seen; keys past the newest
    token are a static cache's slots ahead, which causality hides and the padding marks unseen."""
    if key_length >= tokens:
        if padding.shape[-1] >= key_length:
            return padding[:, :key_length]
        return torch.nn.functional.pad(padding, (0, key_length - padding.shape[-1]), value=False)
    return padding.index_select(1, key_positions)


def _static_positions(
    layout: Layout,
    padding: torch.Tensor | None,
    q_len: int,
    k_len: int,
    cache_window: int | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Query and key positions of a static-cache call, and which keys may be seen, all on the device.

    Four cases, told apart by shapes: transformers' `StaticLayer` returns all its slots (slot ``j`` holds
    position ``j``; causality hides the slots not yet written); a fresh bounded layer returns the prompt
    itself; a written bounded layer (`StaticSinkWindowLayer`) returns, for one new token, its prefix slots
    and its ring of ``window`` slots (ring slot ``j`` holds the latest token ``t <= query`` with
    ``t % window == j``) and, for several, its prefix slots, the ``window - 1`` tokens before them in
    order, then the new tokens. Slots not yet written, and ring slots whose token lies in the prefix, are
    not seen.
    """
    start = layout.query_start.to(device)
    query_positions = start + torch.arange(q_len, device=device)
    real = padding
    if k_len >= layout.tokens:
        key_positions = torch.arange(k_len, device=device)
        valid = None
    elif k_len == q_len:
        key_positions = query_positions
        valid = None
    elif cache_window is None:
        raise NotImplementedError(
            "This layer's static cache is transformers' own sliding-window layer, whose slots a patched layer "
            "that keeps exact attention cannot place. Use generate(cache_implementation='dynamic'), or patch "
            "every layer with 'sliding'."
        )
    else:
        prefix = kept_prefix(k_len, q_len, cache_window)
        prefix_positions = torch.arange(prefix, device=device)
        if q_len == 1:  # the ring, the new token written into it (and into its prefix slot, if it has one)
            slots = torch.arange(cache_window, device=device)
            ring_positions = start - (start - slots).remainder(cache_window)
            key_positions = torch.cat([prefix_positions, ring_positions])
            valid = torch.cat([prefix_positions <= start, ring_positions >= prefix])[None, :]
        else:
            tail = cache_window - 1
            tail_positions = start - tail + torch.arange(tail, device=device)
            key_positions = torch.cat([prefix_positions, tail_positions, query_positions])
            # prefix slots are written once the stream passes them; tail slots hold real tokens past the prefix
            valid = torch.cat(
                [prefix_positions < start, tail_positions >= prefix, torch.ones(q_len, dtype=torch.bool, device=device)]
            )[None, :]
    if real is not None:
        real = real.index_select(1, key_positions.clamp(0, real.shape[-1] - 1))
        valid = real if valid is None else valid & real
    return query_positions, key_positions, valid


def documents_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Document ids of packed sequences: positions restart at each document (0 everywhere if unpacked)."""
    first = position_ids[:, :1] - 1
    starts = torch.diff(position_ids, prepend=first, dim=-1) != 1
    return starts.cumsum(-1)


def _documents(position_ids: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor | None:
    """Document ids when the rows may hold packed documents, else None.

    Eager mode reads once per forward (every layer gets the same position_ids tensor) whether a row
    restarts its positions; under ``torch.compile`` that cannot be read, so the ids are always given and
    the backends apply them (as transformers' own mask does there).
    """
    ids = position_ids.to(device)
    ids = ids if ids.shape[0] == batch else ids.expand(batch, -1)
    if tracing():
        return documents_from_position_ids(ids)
    return _DOCUMENTS.get(position_ids, (batch, device), lambda: _packed_or_none(ids))


def _packed_or_none(position_ids: torch.Tensor) -> torch.Tensor | None:
    documents = documents_from_position_ids(position_ids)
    return None if bool((documents[:, -1] == 0).all()) else documents


_DOCUMENTS: TensorMemo[torch.Tensor | None] = TensorMemo()
"""Document ids (or None) per position_ids tensor, batch size and device."""


def _as_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """A caller's 4-D mask as bool (True = may attend); additive float masks use 0 for visible."""
    if mask.dim() != 4:
        raise ValueError(f"Expected a 4-D attention mask [batch, heads, q_len, k_len], got shape {tuple(mask.shape)}.")
    if mask.dtype == torch.bool:
        return mask
    return mask == 0
