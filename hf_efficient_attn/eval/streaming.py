"""Streaming perplexity: one long token stream through the model chunk by chunk with its KV cache.

This is how generation reads a long text, and how StreamingLLM measures a bounded cache: every token is
scored once, given every earlier token the cache still holds. Chunk ``[begin, end)`` goes through the
model with the cache of all chunks before it; its logits score tokens ``begin + 1 .. end``, the last one
scoring the first token of the next chunk. The unpatched model's cache grows with the stream (and past
its trained positions it degrades); a model patched with causal `sliding` keeps its sinks and window.

``positions`` says where rotary positions come from: ``"text"``, the token's index in the stream (what
`generate()` does), or ``"cache"``, the token's index in the bounded cache (StreamingLLM,
`streaming.streaming_cache`), which keeps positions within what the model was trained on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache

from ..compat import model_cache_keyword
from ..streaming import stream_position_ids, streaming_cache
from .errors import EvalInputError

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
    """

    token_nll: torch.Tensor
    chunk_size: int
    seconds: float
    held_tokens: list[int] = field(default_factory=list)
    peak_bytes: int | None = None

    @property
    def tokens(self) -> int:
        return self.token_nll.numel()

    @property
    def perplexity(self) -> float:
        return math.exp(float(self.token_nll.double().mean()))

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    def stretch_perplexities(self, stretch: int) -> list[float]:
        """Perplexity over consecutive stretches of ``stretch`` scored tokens (the last may be shorter)."""
        return [math.exp(float(part.double().mean())) for part in self.token_nll.split(stretch)]


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
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    begin_time = time.perf_counter()
    pending: torch.Tensor | None = None  # the logits of the previous chunk's last token
    starts = range(0, ids.numel(), chunk_size)
    with torch.no_grad():
        for begin in tqdm(starts, desc="perplexity (streaming)", unit="chunk", disable=not progress):
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
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - begin_time
    return StreamingResult(
        token_nll=torch.cat(pieces).cpu(),
        chunk_size=chunk_size,
        seconds=seconds,
        held_tokens=held,
        peak_bytes=torch.cuda.max_memory_allocated(device) if cuda else None,
    )
