"""Independent float64 specifications: dense masks from the variants' definitions, and softmax attention."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def dense_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, visible: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Softmax attention in float64 with an explicit bool mask ``[b|1, h|1, q, k]``.

    Rows with no visible key give 0, with zero gradients (they are softmaxed as zeros, then dropped).
    """
    groups = query.shape[1] // key.shape[1]
    key = key.double().repeat_interleave(groups, dim=1)
    value = value.double().repeat_interleave(groups, dim=1)
    scores = query.double() @ key.transpose(-1, -2) * scaling
    scores = scores.masked_fill(~visible, float("-inf"))
    any_visible = visible.any(-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(~any_visible, 0.0), dim=-1) * any_visible
    return weights @ value


def sliding_mask(
    query_positions: list[int] | torch.Tensor,
    key_positions: list[int] | torch.Tensor,
    *,
    window: int,
    causal: bool,
    sinks: int = 0,
    global_tokens: int = 0,
    starts: list[int] | None = None,
    key_padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """The sliding-window definition, pair by pair (slow on purpose): bool ``[b, 1, q, k]``."""
    query_positions = [int(p) for p in query_positions]
    key_positions = [int(p) for p in key_positions]
    starts = starts or [0]
    mask = torch.zeros(len(starts), 1, len(query_positions), len(key_positions), dtype=torch.bool)
    for row, start in enumerate(starts):
        for i, q in enumerate(query_positions):
            for j, k in enumerate(key_positions):
                if causal and k > q:
                    continue
                if key_padding is not None and not key_padding[row, j]:
                    continue
                near = (q - k < window) if causal else abs(q - k) < window
                sink = 0 <= k - start < sinks
                is_global = 0 <= k - start < global_tokens or 0 <= q - start < global_tokens
                mask[row, 0, i, j] = near or sink or is_global
    return mask


def grid_mask(length: int, grid: tuple[int, int], prefix: int, window: int) -> torch.Tensor:
    """2-D neighbourhood over a patch grid with ``prefix`` global tokens before it: bool ``[1, 1, n, n]``."""
    columns = grid[1]
    mask = torch.zeros(1, 1, length, length, dtype=torch.bool)
    for q in range(length):
        for k in range(length):
            if q < prefix or k < prefix:
                mask[0, 0, q, k] = True
                continue
            qr, qc = divmod(q - prefix, columns)
            kr, kc = divmod(k - prefix, columns)
            mask[0, 0, q, k] = abs(qr - kr) < window and abs(qc - kc) < window
    return mask


def counted_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, counts: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Softmax attention in float64 where key ``j`` of query ``i`` counts ``counts[..., i, j]`` times
    (``[b|1, h|1, q, k]``, 0: not seen): ``Σ c·e^s·v / Σ c·e^s``; rows that count no key give 0."""
    groups = query.shape[1] // key.shape[1]
    key = key.double().repeat_interleave(groups, dim=1)
    value = value.double().repeat_interleave(groups, dim=1)
    scores = query.double() @ key.transpose(-1, -2) * scaling
    scores = scores.masked_fill(counts == 0, float("-inf"))
    any_seen = (counts > 0).any(-1, keepdim=True)
    maximum = scores.amax(-1, keepdim=True).masked_fill(~any_seen, 0.0)
    weights = counts.double() * torch.exp(scores - maximum)
    total = weights.sum(-1, keepdim=True)
    return weights / torch.where(any_seen, total, torch.ones_like(total)) @ value


def lsh_buckets(x: torch.Tensor, rotations: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Angular LSH by its definition, vector by vector: bucket ``argmax([x·R, -x·R])`` per round,
    long ``[..., rounds, n]`` for ``x [..., n, d]``."""
    leading, (length, _) = x.shape[:-2], x.shape[-2:]
    rounds = rotations.shape[0]
    buckets = torch.zeros(*leading, rounds, length, dtype=torch.long)
    if num_buckets == 1:
        return buckets
    flat_x = x.detach().double().reshape(-1, length, x.shape[-1])
    flat = buckets.view(-1, rounds, length)
    for row in range(flat_x.shape[0]):
        for r in range(rounds):
            matrix = rotations[r, :, : num_buckets // 2].double()
            for i in range(length):
                projections = [float(flat_x[row, i] @ matrix[:, c]) for c in range(num_buckets // 2)]
                candidates = projections + [-p for p in projections]
                flat[row, r, i] = max(range(num_buckets), key=lambda b: (candidates[b], -b))
    return buckets


def first_real_tokens(real: list[bool], count: int) -> list[int]:
    """The indices of a row's first ``count`` real tokens (LSH's sink keys)."""
    return [j for j, is_real in enumerate(real) if is_real][:count]


def lsh_chunk_pairs(
    query_buckets: list[int],
    key_buckets: list[int],
    real: list[bool],
    bucket_size: int,
    causal: bool,
    sink_keys: Sequence[int] = (),
) -> set[tuple[int, int]]:
    """The (query, key) pairs one LSH round gives a call whose query ``i`` and key ``i`` are token ``i``:
    the real queries of each bucket, in position order, in chunks of ``bucket_size``; a chunk sees the
    ``bucket_size`` real keys of its bucket at or before its first query's position and the ``bucket_size``
    after; every real query also sees ``sink_keys``; (causal) no query sees a key after itself. A set: a
    pair counts once in a round however many ways the round gives it."""
    pairs = set()
    for bucket in set(query_buckets):
        queries = [i for i, b in enumerate(query_buckets) if b == bucket and real[i]]
        keys = [j for j, b in enumerate(key_buckets) if b == bucket and real[j]]
        for start in range(0, len(queries), bucket_size):
            first = queries[start]
            before = sum(1 for j in keys if j <= first)
            window = keys[max(0, before - bucket_size) : before + bucket_size]
            for i in queries[start : start + bucket_size]:
                pairs.update((i, j) for j in [*window, *sink_keys] if not (causal and j > i))
    return pairs


def lsh_recent_pairs(
    query_buckets: list[int],
    key_buckets: list[int],
    query_positions: list[int],
    key_real: list[bool],
    bucket_size: int,
    sink_keys: Sequence[int] = (),
) -> set[tuple[int, int]]:
    """The (query, key) pairs one LSH round gives queries over a KV cache (key ``j`` at position ``j``): the
    last ``bucket_size`` real keys of the query's bucket at or before its position, and ``sink_keys`` at or
    before it; a set, as `lsh_chunk_pairs`."""
    pairs = set()
    for i, (bucket, position) in enumerate(zip(query_buckets, query_positions, strict=True)):
        keys = [j for j, b in enumerate(key_buckets) if b == bucket and key_real[j] and j <= position]
        pairs.update((i, j) for j in [*keys[-bucket_size:], *sink_keys] if j <= position)
    return pairs


def axial_mask(grid: tuple[int, int], prefix: int, heads: int) -> torch.Tensor:
    """Axial attention over a patch grid after ``prefix`` global tokens: the first ``heads // 2`` heads see
    their patch's row, the others its column; prefix tokens see and are seen by all. ``[1, heads, n, n]``."""
    rows, columns = grid
    length = prefix + rows * columns
    mask = torch.zeros(1, heads, length, length, dtype=torch.bool)
    for h in range(heads):
        for q in range(length):
            for k in range(length):
                if q < prefix or k < prefix:
                    mask[0, h, q, k] = True
                    continue
                (qr, qc), (kr, kc) = divmod(q - prefix, columns), divmod(k - prefix, columns)
                mask[0, h, q, k] = qr == kr if h < heads // 2 else qc == kc
    return mask
