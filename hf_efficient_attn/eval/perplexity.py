"""Perplexity of causal language models: strided sliding windows, or whole documents in one forward.

Strided mode is the evaluation of the transformers perplexity guide: the documents are joined into
one token stream, windows of ``max_length`` tokens start every ``stride`` tokens, and in each window
only the tokens that no earlier window scored are targets; the tokens before them are context (label
-100 in the guide). With ``stride < max_length`` every target after the first window has at least
``max_length - stride`` tokens of context. Whole-document mode feeds each document (up to
``max_length`` tokens) in one forward: the long-context measure.

Counting is exact. A token is predicted by the logits of the position before it, so the first token of
the stream (of each document, in document mode) is never a target and every later token is a target
exactly once; that is why ``stride`` must stay below ``max_length`` (a window that starts where the
previous one ended has no position to predict its first token from). The result is the token-weighted
mean negative log-likelihood over all targets, not a mean of per-window means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .errors import EvalInputError
from .progress import description
from .results import Score

LOGIT_CHUNK = 4096
"""Positions whose logits are upcast to float32 at a time when summing the NLL (bounds the float32 copy)."""

MODES = ("strided", "document")


@dataclass(frozen=True)
class ScoringWindow:
    """Tokens ``[begin, end)`` of the stream go through the model; tokens ``[first_target, end)`` are scored."""

    begin: int
    end: int
    first_target: int


@dataclass
class PerplexityResult:
    """Summed NLL (nats) over ``tokens`` scored tokens, from ``forwards`` forward passes."""

    nll_sum: float
    tokens: int
    forwards: int
    truncated_documents: int = 0

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)


def check_lengths(max_length: int, stride: int | None = None) -> None:
    """Raise `EvalInputError` unless ``max_length >= 2`` and ``1 <= stride < max_length``."""
    if not isinstance(max_length, int) or max_length < 2:
        raise EvalInputError(f"max_length must be an integer >= 2 (a window needs context and a target), got {max_length!r}.")
    if stride is not None and (not isinstance(stride, int) or not 1 <= stride < max_length):
        raise EvalInputError(
            f"stride must be an integer in [1, max_length - 1] = [1, {max_length - 1}], got {stride!r}: each "
            "window keeps max_length - stride tokens of context, and its first target needs at least one. "
            f"For windows that barely overlap use stride={max_length - 1}."
        )


def scoring_windows(num_tokens: int, max_length: int, stride: int) -> list[ScoringWindow]:
    """The windows of strided evaluation over a stream of ``num_tokens`` tokens (none if fewer than 2)."""
    check_lengths(max_length, stride)
    windows: list[ScoringWindow] = []
    scored_until = 1
    for begin in range(0, num_tokens if num_tokens >= 2 else 0, stride):
        end = min(begin + max_length, num_tokens)
        windows.append(ScoringWindow(begin, end, scored_until))
        scored_until = end
        if end == num_tokens:
            break
    return windows


def _target_nll(model: nn.Module, ids: torch.Tensor, first_target: int) -> float:
    """Summed NLL of ``ids[first_target:]``, each given the tokens before it, from one forward of ``ids``."""
    kept = ids.numel() - first_target + 1
    with torch.no_grad():
        logits = model(input_ids=ids[None], use_cache=False, logits_to_keep=kept).logits[0, :-1]
    targets = ids[first_target:]
    total = 0.0
    for start in range(0, targets.numel(), LOGIT_CHUNK):
        chunk = slice(start, start + LOGIT_CHUNK)
        total += F.cross_entropy(logits[chunk].float(), targets[chunk], reduction="sum").item()
    return total


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def strided_perplexity(
    model: nn.Module, token_ids: torch.Tensor, max_length: int, stride: int, progress: bool = True
) -> PerplexityResult:
    """Perplexity of one token stream (1-D ids) with windows of ``max_length`` tokens every ``stride``."""
    windows = scoring_windows(token_ids.numel(), max_length, stride)
    if not windows:
        raise EvalInputError(f"The text has {token_ids.numel()} token(s); perplexity needs at least 2.")
    ids = token_ids.to(_device_of(model))
    nll = 0.0
    for window in tqdm(windows, desc=description("perplexity (strided)"), unit="window", disable=not progress):
        nll += _target_nll(model, ids[window.begin : window.end], window.first_target - window.begin)
    return PerplexityResult(nll_sum=nll, tokens=token_ids.numel() - 1, forwards=len(windows))


def document_perplexity(
    model: nn.Module, documents: Sequence[torch.Tensor], max_length: int, progress: bool = True
) -> PerplexityResult:
    """Perplexity over documents (1-D ids each), each cut to its first ``max_length`` tokens and fed whole."""
    check_lengths(max_length)
    device = _device_of(model)
    result = PerplexityResult(nll_sum=0.0, tokens=0, forwards=0)
    for document in tqdm(documents, desc=description("perplexity (documents)"), unit="doc", disable=not progress):
        if document.numel() > max_length:
            result.truncated_documents += 1
        ids = document[:max_length].to(device)
        if ids.numel() < 2:
            continue
        result.nll_sum += _target_nll(model, ids, 1)
        result.tokens += ids.numel() - 1
        result.forwards += 1
    if result.tokens == 0:
        raise EvalInputError(f"None of the {len(documents)} document(s) has 2 or more tokens; nothing to score.")
    return result


@dataclass
class PerplexityPlan:
    """Tokenized text and how to score it: one stream (``"strided"``) or one sequence per document."""

    mode: str
    sequences: list[torch.Tensor]
    max_length: int
    stride: int | None = None
    skipped_documents: int = 0
    """Document mode: documents left out for being shorter than the plan's ``min_tokens``."""

    def forward_lengths(self) -> list[int]:
        """The distinct input lengths the evaluation feeds the model.

        Fused kernels compile and autotune once per length; warming up on exactly these keeps that
        one-time cost out of timed evaluations.
        """
        if self.mode == "strided":
            windows = scoring_windows(self.sequences[0].numel(), self.max_length, self.stride)
            return sorted({window.end - window.begin for window in windows})
        return sorted({min(ids.numel(), self.max_length) for ids in self.sequences if ids.numel() >= 2})

    def describe(self) -> str:
        """What one evaluation of the plan runs, e.g. ``31 windows of 1024 tokens, 512 apart, over 16,384 tokens``."""
        if self.mode == "strided":
            tokens = self.sequences[0].numel()
            windows = scoring_windows(tokens, self.max_length, self.stride)
            return f"{len(windows)} windows of {self.max_length} tokens, {self.stride} apart, over {tokens:,} tokens"
        count = len(self.sequences)
        skipped = f" ({self.skipped_documents} more left out for being short)" if self.skipped_documents else ""
        return f"{count} document{'s' * (count != 1)}{skipped}, each up to {self.max_length} tokens in one forward"


def plan_perplexity(
    tokenizer,
    texts: Sequence[str],
    *,
    mode: str = "strided",
    max_length: int = 1024,
    stride: int | None = None,
    min_tokens: int | None = None,
    max_tokens: int | None = None,
) -> PerplexityPlan:
    """Check the settings and tokenize ``texts`` for `run_perplexity`.

    Strided mode joins the texts with blank lines into one stream, as the transformers guide does, and
    keeps its first ``max_tokens`` tokens (all without it); ``stride`` defaults to ``max_length // 2``.
    Document mode keeps each text on its own; with ``min_tokens`` only documents of at least that many
    tokens (the long-document measure: with ``min_tokens = max_length`` every scored document fills the
    whole context).
    """
    if mode not in MODES:
        raise EvalInputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    if min_tokens is not None and mode != "document":
        raise EvalInputError(f"min_tokens selects documents by length and needs mode='document', got mode={mode!r}.")
    if max_tokens is not None and mode != "strided":
        raise EvalInputError(f"max_tokens cuts the joined text of mode='strided', got mode={mode!r}; limit the number "
                             "of documents instead (max_samples).")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 2):
        raise EvalInputError(f"max_tokens must be an integer of at least 2, got {max_tokens!r}.")
    if mode == "document":
        check_lengths(max_length)
        documents = [torch.tensor(ids, dtype=torch.long) for ids in tokenizer(list(texts))["input_ids"]]
        if min_tokens is None:
            return PerplexityPlan(mode, documents, max_length)
        if min_tokens < 2:
            raise EvalInputError(f"min_tokens must be at least 2 (a document scores from its second token), got {min_tokens}.")
        long_enough = [ids for ids in documents if ids.numel() >= min_tokens]
        if not long_enough:
            longest = max((ids.numel() for ids in documents), default=0)
            raise EvalInputError(f"None of the {len(documents)} document(s) has {min_tokens} or more tokens (the "
                                 f"longest has {longest}); lower min_tokens.")
        return PerplexityPlan(mode, long_enough, max_length, skipped_documents=len(documents) - len(long_enough))
    stride = max_length // 2 if stride is None else stride
    check_lengths(max_length, stride)
    stream = torch.tensor(tokenizer("\n\n".join(texts))["input_ids"], dtype=torch.long)[:max_tokens]
    return PerplexityPlan(mode, [stream], max_length, stride)


def run_perplexity(model: nn.Module, plan: PerplexityPlan, progress: bool = True) -> Score:
    """Score ``model`` on a `PerplexityPlan`: perplexity, with the NLL and counts behind it as details."""
    if plan.mode == "strided":
        result = strided_perplexity(model, plan.sequences[0], plan.max_length, plan.stride, progress)
        settings = {"mode": plan.mode, "max_length": plan.max_length, "stride": plan.stride}
    else:
        result = document_perplexity(model, plan.sequences, plan.max_length, progress)
        settings = {"mode": plan.mode, "max_length": plan.max_length, "documents": len(plan.sequences),
                    "truncated_documents": result.truncated_documents, "skipped_documents": plan.skipped_documents}
    return Score(
        metric="perplexity",
        value=result.perplexity,
        higher_is_better=False,
        details={**settings, "mean_nll": result.mean_nll, "tokens": result.tokens, "forwards": result.forwards},
    )


def text_perplexity(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    mode: str = "strided",
    max_length: int = 1024,
    stride: int | None = None,
    progress: bool = True,
) -> Score:
    """Perplexity of ``model`` on ``texts``: `plan_perplexity` then `run_perplexity`."""
    plan = plan_perplexity(tokenizer, texts, mode=mode, max_length=max_length, stride=stride)
    return run_perplexity(model, plan, progress)
