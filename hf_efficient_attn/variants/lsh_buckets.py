"""Bucketing, sorting and chunking for `lsh`: which keys each query of one hash round may attend to.

Hashing (angular LSH, as in Reformer; HyperAttention hashes separately projected queries and keys with
the same rotations): a vector ``x`` goes to bucket ``argmax([x·R, -x·R])`` for a random matrix ``R`` of
``num_buckets / 2`` columns, so vectors that point the same way tend to share a bucket. One bucket
(``num_buckets=1``) holds every token.

Chunks (a call whose queries are its keys: a prompt, an encoder): the queries of each bucket, in
position order, are cut into chunks of ``bucket_size``; a chunk sees the ``bucket_size`` keys of its
bucket at or before its first query's position and the ``bucket_size`` after it (``2·bucket_size`` keys:
Reformer's chunk and the chunk before, counted in the keys of the bucket). In causal layers each query
further sees only keys at or before its own position. Everything that decides which keys a query sees
is counted within its bucket and from tokens at or before its chunk's first query, so nothing later
than a query changes what it sees (a chunk of the global sorted order, as Reformer cuts it, would move
with the buckets of later tokens).

To run that with static shapes, queries are sorted by (bucket, position) and placed in slots so that
every bucket starts a new chunk (`chunk_windows`): ``ceil(n / bucket_size) + num_buckets`` chunks hold
any assignment. Keys are sorted by (bucket, position) too, and each chunk reads a window of
``2·bucket_size`` consecutive sorted keys that starts ``bucket_size`` before its first query's place.

Recent keys (a call with fewer queries than keys, over a KV cache, where the earlier queries are gone):
each query sees the last ``bucket_size`` keys of its bucket at or before its position
(`recent_key_mask`), which is what a query that starts its chunk sees in a prompt.

Padding tokens go to a bucket of their own past the last (``num_buckets``), which no real query reads.
Every index here is computed on the device from the buckets (sorts, counts, `searchsorted`), never read
on the host, so the bucketing traces under ``torch.compile`` without graph breaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def derived_bucket_count(tokens: int, bucket_size: int) -> int:
    """The even number of buckets nearest ``tokens / bucket_size`` (at least 2), so that a bucket holds
    about ``bucket_size`` tokens on average."""
    return max(2, 2 * ((tokens + bucket_size) // (2 * bucket_size)))


def hash_buckets(x: torch.Tensor, rotations: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Bucket of each vector in each hash round.

    Args:
        x: ``[..., n, d]``.
        rotations: ``[rounds, d, >= num_buckets / 2]`` random Gaussian matrices, one per round.
        num_buckets: 1, or an even number.

    Returns:
        long ``[..., rounds, n]`` in ``[0, num_buckets)``; computed in at least float32.
    """
    rounds = rotations.shape[0]
    if num_buckets == 1:
        return torch.zeros(*x.shape[:-2], rounds, x.shape[-2], dtype=torch.long, device=x.device)
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    half = rotations[..., : num_buckets // 2].to(compute_dtype)
    rotated = torch.einsum("...nd,rdk->...rnk", x.to(compute_dtype), half)
    return torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)


@dataclass(frozen=True)
class ChunkWindows:
    """Where each query sits among the chunks of one call, and which keys each chunk reads.

    Leading dimensions ``[...]`` are those of the query buckets (batch, heads, rounds).

    Attributes:
        query_at_slot: long ``[..., chunks * bucket_size]``: the query index in each slot, -1 where empty.
        slot_of_query: long ``[..., n]``: the slot of each query (padding queries: the last slot, and
            `query_real` False).
        key_at_window: long ``[..., chunks, 2 * bucket_size]``: the key index at each place of each
            chunk's window (clamped where the window leaves its bucket).
        window_valid: bool ``[..., chunks, 2 * bucket_size]``: places that hold a key of the chunk's bucket.
        window_start: long ``[..., chunks]``: where each chunk's window starts in the sorted keys.
        key_rank: long ``[..., n]``: the place of each key in the sorted keys.
    """

    query_at_slot: torch.Tensor
    slot_of_query: torch.Tensor
    key_at_window: torch.Tensor
    window_valid: torch.Tensor
    window_start: torch.Tensor
    key_rank: torch.Tensor

    @property
    def chunks(self) -> int:
        return self.key_at_window.shape[-2]


def chunk_windows(query_buckets: torch.Tensor, key_buckets: torch.Tensor, num_buckets: int,
                  bucket_size: int) -> ChunkWindows:
    """The chunks of a call whose query ``i`` and key ``i`` are the token at position ``i``.

    Args:
        query_buckets: long ``[..., n]``, in ``[0, num_buckets]`` (``num_buckets``: padding).
        key_buckets: long ``[..., n]`` broadcastable to ``query_buckets``' leading dimensions (the keys a
            group of query heads shares), same range.
        num_buckets: real buckets.
        bucket_size: queries per chunk (and half the keys of its window).
    """
    leading, n = query_buckets.shape[:-1], query_buckets.shape[-1]
    device = query_buckets.device
    size = bucket_size
    positions = torch.arange(n, device=device)
    chunks = -(-n // size) + num_buckets
    slots = chunks * size

    order = (query_buckets * n + positions).argsort(dim=-1)  # queries by (bucket, position)
    sorted_buckets = query_buckets.gather(-1, order)
    counts = torch.zeros(*leading, num_buckets + 1, dtype=torch.long, device=device)
    counts = counts.scatter_add(-1, query_buckets, torch.ones_like(query_buckets))
    first_in_bucket = counts.cumsum(-1) - counts
    chunks_of_bucket = (counts + size - 1) // size
    first_chunk = chunks_of_bucket.cumsum(-1) - chunks_of_bucket
    rank = positions - first_in_bucket.gather(-1, sorted_buckets)
    slot = first_chunk.gather(-1, sorted_buckets) * size + rank
    slot = torch.where(sorted_buckets < num_buckets, slot, slots)  # padding: a slot past the last
    query_at_slot = torch.full((*leading, slots + 1), -1, dtype=torch.long, device=device)
    query_at_slot = query_at_slot.scatter(-1, slot, order)[..., :slots]
    slot_of_query = torch.empty_like(slot).scatter(-1, order, slot.clamp(max=slots - 1))

    first_query = query_at_slot[..., ::size]  # [..., chunks]; -1: an empty chunk
    bucket_at_slot = torch.full((*leading, slots + 1), num_buckets, dtype=torch.long, device=device)
    chunk_bucket = bucket_at_slot.scatter(-1, slot, sorted_buckets)[..., :slots:size]

    key_keys, key_order = (key_buckets * n + positions).sort(dim=-1)
    key_rank = torch.empty_like(key_order).scatter(-1, key_order, positions.expand_as(key_order))
    key_keys = key_keys.expand(*leading, n).contiguous()
    anchor = torch.searchsorted(key_keys, chunk_bucket * n + first_query.clamp(min=0), right=True)
    low = torch.searchsorted(key_keys, chunk_bucket * n)
    high = torch.searchsorted(key_keys, (chunk_bucket + 1) * n)
    start = anchor - size
    window = start[..., None] + torch.arange(2 * size, device=device)  # [..., chunks, 2 * size]
    window_valid = (window >= low[..., None]) & (window < high[..., None]) & (first_query >= 0)[..., None]
    key_order = key_order.expand(*leading, n)
    key_at_window = key_order.gather(-1, window.clamp(0, n - 1).flatten(-2)).view(*leading, chunks, 2 * size)
    return ChunkWindows(query_at_slot, slot_of_query, key_at_window, window_valid, start, key_rank.expand(*leading, n))


def recent_key_mask(query_buckets: torch.Tensor, key_buckets: torch.Tensor, visible: torch.Tensor,
                    bucket_size: int) -> torch.Tensor:
    """Bool ``[..., q, k]``: per query, the last ``bucket_size`` keys (by key index, which follows position)
    that share its bucket among the ``visible`` ones (causality, padding).

    Args:
        query_buckets: long ``[..., q]``.
        key_buckets: long ``[..., k]`` broadcastable to ``query_buckets``' leading dimensions.
        visible: bool broadcastable to ``[..., q, k]``.
    """
    same = (query_buckets[..., :, None] == key_buckets[..., None, :]) & visible
    later = same.flip(-1).long().cumsum(-1).flip(-1) - same.long()  # same-bucket keys after each key
    return same & (later < bucket_size)
