"""Streaming perplexity: one long token stream through the model chunk by chunk with its KV cache.

This is how generation reads a long text, and how StreamingLLM measures a bounded cache: every token is
scored once, given every earlier token the cache still holds. Chunk ``[begin, end)`` goes through the
model with the cache of all chunks before it; its logits score tokens ``begin + 1 .. end``, the last one
scoring the first token of the next chunk. The unpatched model's cache grows with the stream (and past
its trained positions it degrades); a model patched with causal `sliding` keeps its sinks and window.

``positions`` says where rotary positions come from: ``"text"``, the token's index in the stream (what
`generate()` does), or ``"cache"``, the token's index in the bounded cache (StreamingLLM,
`streaming.streaming_cache`), which keeps positions within what the model was trained on. The
comparison runner (`plan_streaming`, `run_streaming`) streams the unpatched model and variants without a
bounded cache with text positions, and models bounded in every layer with the positions asked for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache

from ..compat import model_cache_keyword
from ..streaming import bounded_everywhere, stream_position_ids, streaming_cache
from .errors import EvalInputError
from .progress import description
from .results import Score

Positions = Literal["text", "cache"]
POSITIONS: tuple[str, ...] = ("text", "cache")


@dataclass
class StreamingResult:
    """Per-token NLL (nats) of a stream, and what the cache and the device did meanwhile.

    Attributes:
        token_nll: NLL of tokens ``1 .. n-1`` of the stream, in order (float32, on the CPU).
        chunk_size: tokens per forward.
        seconds: wall time of the forwards.
        held_tokens: tokens the cache of layer 0 held after each chunk (flat for a bounded cache).
        peak_bytes: the device's peak allocated memory during the stream (CUDA), else None.
        chunk_ends: seconds from the start to the end of each chunk's forward (the host's clock: on
            CUDA it runs ahead of the device by the launch queue, a few chunks at most).
    """

    token_nll: torch.Tensor
    chunk_size: int
    seconds: float
    held_tokens: list[int] = field(default_factory=list)
    peak_bytes: int | None = None
    chunk_ends: list[float] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.token_nll.numel()

    @property
    def mean_nll(self) -> float:
        return float(self.token_nll.double().mean())

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    def stretch_perplexities(self, stretch: int) -> list[float]:
        """Perplexity over consecutive stretches of ``stretch`` scored tokens (the last may be shorter)."""
        return [math.exp(float(part.double().mean())) for part in self.token_nll.split(stretch)]

    def stretch_tokens_per_second(self, stretch: int) -> list[float]:
        """Stream tokens per second over each stretch of ``stretch`` positions, from `chunk_ends`: a chunk
        counts towards the stretch of its last position (empty without chunk times)."""
        totals: dict[int, list[float]] = {}
        previous = 0.0
        for index, end_time in enumerate(self.chunk_ends):
            begin = index * self.chunk_size
            end = min(begin + self.chunk_size, self.tokens + 1)
            group = totals.setdefault((end - 1) // stretch, [0.0, 0.0])
            group[0] += end - begin
            group[1] += end_time - previous
            previous = end_time
        return [count / seconds if seconds > 0 else float("nan") for count, seconds in totals.values()]


def check_stream(num_tokens: int, chunk_size: int, positions: str) -> None:
    """Raise `EvalInputError` for a stream too short to score, a chunk below 1 or unknown ``positions``."""
    if num_tokens < 2:
        raise EvalInputError(f"A stream needs at least 2 tokens to score one, got {num_tokens}.")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise EvalInputError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    if positions not in POSITIONS:
        raise EvalInputError(f"positions must be one of {', '.join(map(repr, POSITIONS))}, got {positions!r}.")


def streaming_perplexity(
    model: nn.Module,
    token_ids: torch.Tensor,
    chunk_size: int = 1,
    positions: Positions = "text",
    progress: bool = True,
) -> StreamingResult:
    """Score a 1-D stream of token ids chunk by chunk through the model's KV cache (module docstring).

    Raises:
        EvalInputError: for bad arguments (`check_stream`).
        VariantError: ``positions="cache"`` on a model that is not patched with causal `sliding` in every
            layer (`streaming.streaming_cache`).
    """
    check_stream(token_ids.numel(), chunk_size, positions)
    device = next(model.parameters()).device
    ids = token_ids.to(device)
    cache = streaming_cache(model) if positions == "cache" else DynamicCache(config=model.config)
    keyword = model_cache_keyword(model)
    pieces: list[torch.Tensor] = []
    held: list[int] = []
    chunk_ends: list[float] = []
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    begin_time = time.perf_counter()
    pending: torch.Tensor | None = None  # the logits of the previous chunk's last token
    starts = range(0, ids.numel(), chunk_size)
    with torch.no_grad():
        for begin in tqdm(starts, desc=description("perplexity (streaming)"), unit="chunk", disable=not progress):
            chunk = ids[begin : begin + chunk_size]
            if positions == "cache":
                position_ids = stream_position_ids(cache, chunk.numel(), device)
            else:
                position_ids = torch.arange(begin, begin + chunk.numel(), device=device)[None]
            output = model(input_ids=chunk[None], position_ids=position_ids, use_cache=True, **{keyword: cache})
            logits = output.logits[0]
            if pending is not None:
                pieces.append(F.cross_entropy(pending[None].float(), chunk[:1], reduction="none"))
            if chunk.numel() > 1:
                pieces.append(F.cross_entropy(logits[:-1].float(), chunk[1:], reduction="none"))
            pending = logits[-1]
            held.append(int(cache.layers[0].keys.shape[-2]) if cache.layers[0].is_initialized else 0)
            chunk_ends.append(time.perf_counter() - begin_time)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - begin_time
    return StreamingResult(
        token_nll=torch.cat(pieces).cpu(),
        chunk_size=chunk_size,
        seconds=seconds,
        held_tokens=held,
        peak_bytes=torch.cuda.max_memory_allocated(device) if cuda else None,
        chunk_ends=chunk_ends,
    )


@dataclass(frozen=True)
class StreamingPlan:
    """A tokenized stream and how to score it (`run_streaming`).

    Attributes:
        stream: the documents joined with blank lines, as 1-D token ids (cut at ``max_tokens``).
        chunk_size: tokens per forward.
        positions: what models bounded in every layer use (``"text"`` or ``"cache"``).
        stretch: scored tokens per stretch in the report's perplexity against position.
    """

    stream: torch.Tensor
    chunk_size: int
    positions: Positions
    stretch: int

    def describe(self) -> str:
        """What one evaluation of the plan runs, e.g. ``a stream of 16,384 tokens, 256 per forward (64 forwards)``."""
        tokens = self.stream.numel()
        return f"a stream of {tokens:,} tokens, {self.chunk_size} per forward ({math.ceil(tokens / self.chunk_size)} forwards)"


def plan_streaming(
    tokenizer,
    texts: Sequence[str],
    *,
    chunk_size: int = 256,
    positions: Positions = "cache",
    max_tokens: int | None = None,
    stretch: int = 4096,
) -> StreamingPlan:
    """Check the settings and tokenize ``texts`` into one stream for `run_streaming`."""
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 2):
        raise EvalInputError(f"max_tokens must be an integer of at least 2, got {max_tokens!r}.")
    if not isinstance(stretch, int) or stretch < 1:
        raise EvalInputError(f"stretch must be a positive integer, got {stretch!r}.")
    stream = torch.tensor(tokenizer("\n\n".join(texts))["input_ids"], dtype=torch.long)[:max_tokens]
    check_stream(stream.numel(), chunk_size, positions)
    return StreamingPlan(stream, chunk_size, positions, stretch)


def run_streaming(model: nn.Module, plan: StreamingPlan, progress: bool = True) -> Score:
    """Score ``model`` on a `StreamingPlan`: perplexity, with the stretches, cache size and speed as details."""
    positions = plan.positions if bounded_everywhere(model) is not None else "text"
    result = streaming_perplexity(model, plan.stream, plan.chunk_size, positions, progress)
    return Score(
        metric="perplexity",
        value=result.perplexity,
        higher_is_better=False,
        details={
            "mode": "streaming",
            "positions": positions,
            "chunk_size": plan.chunk_size,
            "tokens": result.tokens,
            "mean_nll": result.mean_nll,
            "stretch": plan.stretch,
            "stretch_perplexities": result.stretch_perplexities(plan.stretch),
            "held_tokens_max": max(result.held_tokens),
            "held_tokens_last": result.held_tokens[-1],
            "tokens_per_second": result.tokens_per_second,
        },
    )
