"""`lsh`: content-based sparse attention (Reformer's locality-sensitive hashing), for decoders and encoders.

Each of ``num_hashes`` rounds hashes queries and keys with the same random rotations (`lsh_buckets`),
so that a query meets the keys that point its way, and computes softmax attention of every query over
the keys its round gives it: in a prompt or an encoder, chunks of ``bucket_size`` queries of one bucket
over ``2·bucket_size`` keys of that bucket around the chunk; over a KV cache, the last ``bucket_size``
keys of the query's bucket. Besides those, every round gives each query the first ``sink_tokens`` real
tokens of its row (StreamingLLM's attention sinks, where pretrained decoders put much of their attention
and which a bucket rarely holds), each counted once whether or not the round's chunk also found it.
Causal layers see no key after the query's position, padding is never seen, packed documents do not see
each other, a model's own sliding window still applies.

The rounds are combined through their log-sum-exps: the output is softmax attention over all the keys
the rounds found, a key counted once per round that found it. Each query also sees its own key, counted
``num_hashes`` times (once per round, whether or not a round found it), so no real query is left
without a key. Where every key is found in every round (one bucket, ``num_buckets=1``, and one chunk,
``bucket_size`` at least the length) this is exact attention.

Not on the fused kernels: the chunks' windows are read by indices computed on the device from the
buckets, causality inside a window is by original position (a staircase in window order, not the
kernels' diagonal), and combining rounds needs each round's log-sum-exp with its gradient, which the
kernels' backward does not propagate. Each round is a batched matrix product over chunks (``O(n ·
bucket_size)`` per round and head) on every device; see docs/variants-lsh-axial.md. Attention dropout
does not apply.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..context import AttentionContext
from .base import (
    AttentionVariant,
    LayerInfo,
    Role,
    VariantError,
    VariantOptions,
    positive_int,
    register_variant,
    warn_exact_pattern,
)
from .lsh_buckets import ChunkWindows, chunk_windows, derived_bucket_count, hash_buckets, recent_key_mask

UNKNOWN_LENGTH_TOKENS = 1 << 16
"""Longest call the rotations are drawn for when ``num_buckets`` is derived and a layer has no known length."""

CAUSAL_SINK_TOKENS = 4
"""Default sink tokens of causal layers (see docs/variants-lsh-axial.md for the measurements behind it)."""


@dataclass(frozen=True)
class LSHOptions(VariantOptions):
    """Options of `lsh`.

    Attributes:
        num_hashes: hash rounds, combined through their log-sum-exps. Default 4.
        bucket_size: queries per chunk; a chunk reads twice as many keys, and a decoding query the last
            ``bucket_size`` keys of its bucket. Default 64.
        num_buckets: buckets per round: 1 (every token in one bucket) or an even number; None derives it
            per call as the even number nearest ``length / bucket_size``. Default None.
        seed: seed of the random rotations (layer ``i`` draws with ``seed * 1000003 + i``). Default 0.
        sink_tokens: leading real tokens of each row (after left padding; over a KV cache, the cache's first)
            that every query sees in every round besides its chunk, each counted once a round; in causal
            layers only queries at or after them. None: `CAUSAL_SINK_TOKENS` in causal layers, where
            pretrained decoders put much of their attention on them, and 0 in bidirectional ones. Default None.
    """

    num_hashes: int = 4
    bucket_size: int = 64
    num_buckets: int | None = None
    seed: int = 0
    sink_tokens: int | None = None

    def sinks_for(self, role: Role) -> int:
        """Sink tokens of a layer of ``role``: the option, or its default there."""
        if self.sink_tokens is not None:
            return self.sink_tokens
        return CAUSAL_SINK_TOKENS if role is Role.CAUSAL else 0

    def validate(self) -> None:
        if isinstance(self.num_hashes, bool) or not isinstance(self.num_hashes, int) or self.num_hashes < 1:
            raise VariantError(f"`num_hashes` must be an integer >= 1 (each round is one hashing of the tokens; "
                               f"1 to 8 are usual), got {self.num_hashes!r}; use num_hashes=4.")
        positive_int("bucket_size", self.bucket_size)
        positive_int("seed", self.seed, minimum=0)
        if self.sink_tokens is not None:
            positive_int("sink_tokens", self.sink_tokens, minimum=0)
        if self.num_buckets is not None:
            positive_int("num_buckets", self.num_buckets)
            if self.num_buckets > 1 and self.num_buckets % 2:
                raise VariantError(
                    f"`num_buckets` must be 1 or even (a rotation and its negation make buckets in pairs), got "
                    f"{self.num_buckets}; use {self.num_buckets + 1}, or None to derive it from the length."
                )


@register_variant("Reformer's LSH buckets: content-based chunks of queries over keys that hash alike (approximate)")
class LSHAttention(AttentionVariant):
    """Locality-sensitive-hashing attention; see the module docstring."""

    name = "lsh"
    options_class = LSHOptions
    roles = frozenset({Role.CAUSAL, Role.BIDIRECTIONAL})
    float32_buffers = ("rotations",)
    options: LSHOptions

    def __init__(self, options: LSHOptions, layer: LayerInfo):
        super().__init__(options, layer)
        self.sink_tokens = options.sinks_for(layer.role)
        self.max_buckets = options.num_buckets or derived_bucket_count(
            layer.sequence_length or layer.max_length or UNKNOWN_LENGTH_TOKENS, options.bucket_size)
        generator = torch.Generator().manual_seed(options.seed * 1_000_003 + max(layer.layer_index, 0))
        columns = max(1, self.max_buckets // 2)
        rotations = torch.randn(options.num_hashes, layer.head_dim, columns, generator=generator)
        self.register_buffer("rotations", rotations, persistent=False)

    @classmethod
    def check_layer(cls, options: LSHOptions, layer: LayerInfo) -> None:
        super().check_layer(options, layer)
        tokens = layer.sequence_length or layer.max_length
        if tokens is not None and options.bucket_size > tokens:
            kind = "tokens" if layer.sequence_length else "positions"
            raise VariantError(
                f"bucket_size={options.bucket_size} is larger than the {tokens} {kind} of this model's "
                f"{layer.target} layers, so one chunk would hold every token; use a bucket_size of at most "
                f"{tokens}, and well below it for the buckets to leave keys out (e.g. {max(1, tokens // 8)})."
            )
        if options.num_buckets == 1:
            warn_exact_pattern(layer, "bucket_size", options.bucket_size, "with num_buckets=1 puts in one chunk",
                               "Use num_buckets >= 2 or a smaller bucket_size.")
        warn_exact_pattern(layer, "sink_tokens", options.sinks_for(layer.role), "makes sinks of",
                           "Use fewer sink_tokens than tokens (a few suffice).")

    def num_buckets(self, tokens: int) -> int:
        """Buckets of a call over ``tokens`` keys: the option, or derived (at most what the rotations hold)."""
        if self.options.num_buckets is not None:
            return self.options.num_buckets
        return min(derived_bucket_count(tokens, self.options.bucket_size), self.max_buckets)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, context: AttentionContext
    ) -> torch.Tensor:
        if context.dense_mask is not None:
            raise VariantError("'lsh' cannot apply a 4-D attention mask; pass a 2-D padding mask instead.")
        batch, q_heads, q_len, head_dim = query.shape
        kv_heads, k_len = key.shape[1], key.shape[-2]
        compute_dtype = torch.promote_types(query.dtype, torch.float32)
        grouped = query.to(compute_dtype).reshape(batch, kv_heads, q_heads // kv_heads, q_len, head_dim)
        key, value = key.to(compute_dtype), value.to(compute_dtype)
        num_buckets = self.num_buckets(k_len)
        query_buckets = hash_buckets(grouped, self.rotations, num_buckets)  # [b, kv, groups, rounds, q]
        key_buckets = hash_buckets(key, self.rotations, num_buckets)[:, :, None]  # [b, kv, 1, rounds, k]
        if _queries_are_keys(query, key, context):
            rounds = _chunked_rounds(grouped, key, value, query_buckets, key_buckets, num_buckets,
                                     self.options.bucket_size, self.sink_tokens, context)
            own_index = torch.arange(q_len, device=query.device)
        else:
            rounds = _recent_key_rounds(grouped, key, value, query_buckets, key_buckets, self.options.bucket_size,
                                        self.sink_tokens, context)
            own_index = context.query_positions
        output = _combine_rounds(*rounds, _own_key(grouped, key, value, own_index, context), self.options.num_hashes)
        return output.reshape(batch, q_heads, q_len, head_dim).to(query.dtype)


def _queries_are_keys(query: torch.Tensor, key: torch.Tensor, context: AttentionContext) -> bool:
    """Whether query ``i`` and key ``i`` are the token at position ``i`` (host facts): then the call runs
    in chunks; otherwise (a KV cache) by recent keys."""
    return context.query_offset == 0 and query.shape[-2] == key.shape[-2] and context.trimmed_prefix is None


def _pair_rules(context: AttentionContext, query_positions: torch.Tensor, key_positions: torch.Tensor,
                query_index: torch.Tensor, key_index: torch.Tensor, padding: bool = True) -> torch.Tensor | None:
    """Bool mask of what causality, documents, a native window and (with ``padding``) key padding allow,
    for queries and keys at the given positions and indices (any broadcastable shapes ``[b|1, ..., q, k]``
    with a leading batch dimension); None where nothing restricts."""
    masks = []
    if context.causal:
        masks.append(key_positions <= query_positions)
    if context.native_window is not None:
        distance = query_positions - key_positions
        masks.append(distance < context.native_window if context.causal else distance.abs() < context.native_window)
    if padding and context.key_padding is not None:
        masks.append(_per_row(context.key_padding, key_index))
    if context.key_documents is not None:
        masks.append(_per_row(context.query_documents, query_index) == _per_row(context.key_documents, key_index))
    return functools.reduce(torch.logical_and, masks) if masks else None


def _per_row(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[b, index[b, ...]]`` for a per-row table ``[b, n]`` and an index ``[b|1, ...]``."""
    flat = index.expand(values.shape[0], *index.shape[1:]).reshape(values.shape[0], -1)
    return values.gather(1, flat).view(values.shape[0], *index.shape[1:])


def _chunked_rounds(query, key, value, query_buckets, key_buckets, num_buckets, bucket_size, sinks, context):
    """Every round over chunks (see `lsh_buckets`), each chunk's window followed by the row's ``sinks`` sink
    keys (`_sink_columns`): output ``[b, kv, groups, rounds, n, d]``, log-sum-exp ``[b, kv, groups, rounds,
    n]`` and whether the query's own key was among its keys, same shape.

    Padding keys are in a bucket of their own, which no window of a real bucket reaches; empty slots and
    padding queries compute rows that no query reads back."""
    batch, kv_heads, groups, n, head_dim = query.shape
    rounds = query_buckets.shape[3]
    if context.key_padding is not None:  # padding tokens take the bucket past the last
        padding = ~context.key_padding[:, None, None, None, :]
        query_buckets = query_buckets.masked_fill(padding, num_buckets)
        key_buckets = key_buckets.masked_fill(padding, num_buckets)
    windows = chunk_windows(query_buckets, key_buckets, num_buckets, bucket_size)
    chunks, width = windows.chunks, 2 * bucket_size
    leading = (batch, kv_heads, groups, rounds)

    def gather_rows(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``states [b, kv, groups|1, n, d]`` at ``index [b, kv, groups, rounds, m]``: ``[..., m, d]``."""
        expanded = states[:, :, :, None].expand(batch, kv_heads, groups, rounds, n, head_dim)
        return expanded.gather(-2, index[..., None].expand(*index.shape, head_dim))

    query_index = windows.query_at_slot.view(*leading, chunks, bucket_size)
    key_index, allowed = windows.key_at_window, windows.window_valid
    if sinks:
        sink_index, sink_allowed = _sink_columns(windows, _sink_keys(context, sinks, n), bucket_size)
        key_index = torch.cat([key_index, sink_index.expand_as(sink_allowed)], dim=-1)
        allowed = torch.cat([allowed, sink_allowed], dim=-1)
        width += sinks
    chunk_query = gather_rows(query * context.scaling, windows.query_at_slot.clamp(min=0))
    window_key = gather_rows(key[:, :, None], key_index.flatten(-2)).view(*leading, chunks, width, head_dim)
    window_value = gather_rows(value[:, :, None], key_index.flatten(-2)).view(*leading, chunks, width, head_dim)
    allowed = allowed[..., None, :]  # [..., chunks, 1, width]
    rules = _pair_rules(context, query_index[..., :, None], key_index[..., None, :],
                        query_index.clamp(min=0)[..., :, None], key_index[..., None, :], padding=False)
    if rules is not None:
        allowed = allowed & rules
    scores = torch.einsum("...qd,...kd->...qk", chunk_query.view(*leading, chunks, bucket_size, head_dim), window_key)
    output, lse = _masked_softmax_attention(scores, allowed, window_value)

    def to_queries(per_slot: torch.Tensor) -> torch.Tensor:
        """``[..., chunks, size, *rest]`` per slot to ``[..., n, *rest]`` per query."""
        flat = per_slot.flatten(4, 5)
        index = windows.slot_of_query.view(*windows.slot_of_query.shape, *([1] * (flat.dim() - 5)))
        return flat.gather(4, index.expand(*leading, n, *flat.shape[5:]))

    # the own key is in the window of its query's chunk when it hashed to the query's bucket and its place in
    # the sorted keys falls inside the window (causality, documents and a native window always allow it)
    start = windows.window_start.gather(-1, windows.slot_of_query // bucket_size)
    reach = 2 * bucket_size
    own_seen = (query_buckets == key_buckets) & (windows.key_rank >= start) & (windows.key_rank < start + reach)
    if sinks:  # a sink's own key is in its sink columns, or in its window (and then masked in the sink columns)
        own_seen = own_seen | _is_sink(context, torch.arange(n, device=query.device), sinks).view(-1, 1, 1, 1, n)
    return to_queries(output), to_queries(lse), own_seen


def _is_sink(context: AttentionContext, positions: torch.Tensor, sinks: int) -> torch.Tensor:
    """Bool ``[b|1, len]``: whether each of ``positions`` (long ``[len]``) is among the first ``sinks``
    positions of its row from the row's first real token."""
    offset = positions[None, :] - context.first_real_positions()[:, None]
    return (offset >= 0) & (offset < sinks)


def _sink_keys(context: AttentionContext, sinks: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sink keys of a call whose key ``i`` is position ``i``: index (clamped) and whether it is a real
    key, long and bool ``[b|1, sinks]``."""
    device = context.key_positions.device
    index = context.first_real_positions()[:, None] + torch.arange(sinks, device=device)
    real = index < length
    index = index.clamp(max=length - 1)
    if context.key_padding is not None:
        real = real & _per_row(context.key_padding, index)
    return index, real


def _sink_columns(windows: ChunkWindows, sink_keys: tuple[torch.Tensor, torch.Tensor],
                  bucket_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sink keys as extra columns of every chunk's window: index ``[b|1, 1, 1, 1, 1, sinks]`` and
    whether each chunk may read each, ``[b, kv, groups, rounds, chunks, sinks]``: a real sink that the
    chunk's window does not already hold (so no key counts twice in a round), for a chunk that holds
    queries (the empty chunk past the last, which padding queries read back, stays without keys)."""
    index, real = (x.view(x.shape[0], 1, 1, 1, 1, x.shape[-1]) for x in sink_keys)
    held = ((windows.key_at_window[..., None] == index[..., None, :]) & windows.window_valid[..., None]).any(-2)
    occupied = windows.query_at_slot[..., ::bucket_size] >= 0  # [..., chunks]
    return index, real & ~held & occupied[..., None]


def _recent_key_rounds(query, key, value, query_buckets, key_buckets, bucket_size, sinks, context):
    """Every round by recent keys (see `lsh_buckets.recent_key_mask`) and the visible ones of the cache's
    first ``sinks`` real tokens, same results as `_chunked_rounds`."""
    q_len = query.shape[-2]
    key_index = torch.arange(key.shape[-2], device=key.device)
    query_index = torch.arange(q_len, device=key.device)
    rules = _pair_rules(context, context.query_positions[None, :, None], context.key_positions[None, None, :],
                        query_index[None, :, None], key_index[None, None, :])
    visible = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=key.device) if rules is None else rules
    visible = visible.view(visible.shape[0], 1, 1, 1, *visible.shape[-2:])  # [b|1, 1, 1, 1, q, k]
    allowed = recent_key_mask(query_buckets, key_buckets, visible, bucket_size)  # [b, kv, groups, rounds, q, k]
    if sinks:
        sink = _is_sink(context, context.key_positions, sinks)
        allowed = allowed | (sink.view(sink.shape[0], 1, 1, 1, 1, -1) & visible)
    scores = torch.einsum("bhgqd,bhkd->bhgqk", query * context.scaling, key)[:, :, :, None]
    output, lse = _masked_softmax_attention(scores, allowed, value[:, :, None, None])
    own = context.query_positions.view(1, 1, 1, 1, q_len, 1).expand(*allowed.shape[:-1], 1)
    return output, lse, allowed.gather(-1, own).squeeze(-1)


def _masked_softmax_attention(
    scores: torch.Tensor, allowed: torch.Tensor, values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention under ``allowed`` and its log-sum-exp; rows without a key give output 0 and
    log-sum-exp ``-inf``, with finite (zero) gradients."""
    scores = torch.where(allowed, scores, float("-inf"))
    maximum = scores.amax(-1, keepdim=True)
    maximum = torch.where(torch.isfinite(maximum), maximum, torch.zeros_like(maximum)).detach()
    weights = torch.exp(scores - maximum)
    total = weights.sum(-1, keepdim=True)
    output = (weights @ values) / torch.where(total > 0, total, torch.ones_like(total))
    lse = torch.where(total > 0, torch.log(total.clamp(min=torch.finfo(total.dtype).tiny)) + maximum,
                      torch.full_like(total, float("-inf")))
    return output, lse.squeeze(-1)


def _own_key(query, key, value, own_index, context):
    """Each query's score against its own key, that key's value, and whether it is a real key:
    ``[b, kv, groups, q]``, ``[b, kv, groups, q, d]``, ``[b|1, 1, 1, q]``."""
    head_dim = key.shape[-1]
    own_key = key.index_select(-2, own_index)[:, :, None]
    own_value = value.index_select(-2, own_index)[:, :, None]
    score = (query * own_key).sum(-1) * context.scaling
    real = torch.ones(1, 1, 1, own_index.shape[0], dtype=torch.bool, device=key.device)
    if context.key_padding is not None:
        real = context.key_padding.index_select(1, own_index)[:, None, None, :]
    return score, own_value.expand(*score.shape, head_dim), real


def _combine_rounds(outputs, lses, own_seen, own, rounds: int) -> torch.Tensor:
    """Softmax over every round's keys and the query's own key: the rounds' outputs weighted by their
    normalizers, the own key weighted ``rounds`` times less the rounds that already counted it.

    Args:
        outputs, lses, own_seen: ``[b, kv, groups, rounds, q, d]``, ``[..., rounds, q]``, ``[..., rounds, q]``.
        own: `_own_key`'s score, value and realness.
    """
    score, own_value, real = own
    missing = rounds - own_seen.long().sum(3)
    own_lse = torch.where(real & (missing > 0), score + torch.log(missing.clamp(min=1).to(score.dtype)),
                          torch.full_like(score, float("-inf")))
    lses = torch.cat([lses, own_lse[:, :, :, None]], dim=3)
    outputs = torch.cat([outputs, own_value[:, :, :, None]], dim=3)
    maximum = lses.amax(3, keepdim=True)
    maximum = torch.where(torch.isfinite(maximum), maximum, torch.zeros_like(maximum)).detach()
    weights = torch.exp(lses - maximum)
    total = weights.sum(3, keepdim=True)
    weights = weights / torch.where(total > 0, total, torch.ones_like(total))
    return (weights[..., None] * outputs).sum(3)
