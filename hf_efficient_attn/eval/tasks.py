"""The evaluation of a task as functions of a model, so the same run can score every patched version.

`evaluator_for` joins a loaded checkpoint (`models.EvalModel`), data of the matching kind
(`data.EvalData`) and the run's settings into a `TaskEvaluation`: ``evaluate(model) -> Score``, which
the comparison runner calls on the unpatched model and on each patched version, and ``warm_up(model)``,
an untimed pass over the input shapes of the evaluation (every window or document length for text,
the first batch for speech and vision) that it runs first, so one-time costs such as compiling and
autotuning kernels for a new shape stay out of the timings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .data import EvalData, check_kind
from .errors import EvalInputError
from .models import EvalModel
from .results import Score

DEFAULT_MAX_LENGTH = 1024


@dataclass
class EvalSettings:
    """Settings of one evaluation run; each task reads the ones that concern it.

    Attributes:
        max_length: text: tokens per window (strided) or per document; default the smaller of 1024 and
            the model's ``max_position_embeddings``.
        stride: text, strided mode: tokens between window starts; default ``max_length // 2``.
        min_tokens: text, document mode: score only documents of at least this many tokens.
        mode: text: ``"strided"`` or ``"document"`` (see `perplexity`), or ``"streaming"`` (see `streaming`).
        chunk_size: text, streaming: tokens per forward.
        positions: text, streaming: rotary positions of models bounded in every layer, ``"cache"`` or
            ``"text"``.
        max_tokens: text, strided and streaming: score only the first tokens of the joined text.
        stretch: text, streaming: scored tokens per stretch of the perplexity against position.
        batch_size: speech and vision: samples per forward or ``generate()`` call.
        normalize: speech: the headline is the WER after Whisper's English normalizer; False: the raw WER
            (both are reported, see `speech.speech_error_rates`).
        generate_kwargs: speech: extra ``generate()`` arguments (``language``, ``max_new_tokens``, ...).
        progress: show progress bars.
    """

    max_length: int | None = None
    stride: int | None = None
    min_tokens: int | None = None
    mode: str = "strided"
    chunk_size: int = 256
    positions: str = "cache"
    max_tokens: int | None = None
    stretch: int = 4096
    batch_size: int = 8
    normalize: bool = True
    generate_kwargs: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise EvalInputError(f"batch_size must be >= 1, got {self.batch_size}.")


@dataclass
class TaskEvaluation:
    """``evaluate(model)`` scores a model on the whole data; ``warm_up(model)`` runs its input shapes untimed;
    ``description`` says what one evaluation runs (windows, documents, clips or images, and their sizes)."""

    evaluate: Callable[[nn.Module], Score]
    warm_up: Callable[[nn.Module], object]
    description: str


def evaluator_for(loaded: EvalModel, data: EvalData, settings: EvalSettings) -> TaskEvaluation:
    """The `TaskEvaluation` of ``loaded``'s task on ``data``; `EvalInputError` if the data's kind differs."""
    check_kind(data, loaded.task, loaded.source)
    if loaded.task == "text":
        return _text(loaded, data.dataset, settings)
    if loaded.task == "speech":
        return _speech(loaded, data.dataset, settings)
    return _vision(loaded, data.dataset, settings)


def _text(loaded: EvalModel, dataset, settings: EvalSettings) -> TaskEvaluation:
    from .perplexity import plan_perplexity, run_perplexity

    limit = getattr(loaded.model.config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH
    if settings.mode == "streaming":
        return _text_stream(loaded, dataset, settings, limit)
    max_length = settings.max_length or min(DEFAULT_MAX_LENGTH, limit)
    if max_length > limit:
        raise EvalInputError(f"max_length={max_length} exceeds the model's max_position_embeddings={limit}; use at most {limit}.")
    plan = plan_perplexity(loaded.tokenizer, list(dataset["text"]), mode=settings.mode, max_length=max_length, stride=settings.stride,
                           min_tokens=settings.min_tokens, max_tokens=settings.max_tokens)

    def warm_up(model: nn.Module) -> None:
        device = next(model.parameters()).device
        for length in plan.forward_lengths():
            with torch.no_grad():
                model(input_ids=torch.zeros(1, length, dtype=torch.long, device=device), use_cache=False, logits_to_keep=1)

    return TaskEvaluation(lambda model: run_perplexity(model, plan, settings.progress), warm_up, plan.describe())


def _text_stream(loaded: EvalModel, dataset, settings: EvalSettings, limit: int) -> TaskEvaluation:
    """Streaming perplexity: the stream may run far past the model's context; a chunk may not."""
    from .streaming import plan_streaming, run_streaming

    if settings.chunk_size > limit:
        raise EvalInputError(f"chunk_size={settings.chunk_size} exceeds the model's max_position_embeddings={limit}.")
    plan = plan_streaming(loaded.tokenizer, list(dataset["text"]), chunk_size=settings.chunk_size,
                          positions=settings.positions, max_tokens=settings.max_tokens, stretch=settings.stretch)

    def warm_up(model: nn.Module) -> None:
        device = next(model.parameters()).device
        with torch.no_grad():
            model(input_ids=plan.stream[None, : plan.chunk_size].to(device), use_cache=False, logits_to_keep=1)

    return TaskEvaluation(lambda model: run_streaming(model, plan, settings.progress), warm_up, plan.describe())


def _speech(loaded: EvalModel, dataset, settings: EvalSettings) -> TaskEvaluation:
    from .audio import check_sample_rates, waveform
    from .error_rates import load_metric
    from .speech import speech_error_rates, transcribe

    load_metric()  # now, so that loading it is not timed as part of the first evaluation
    samples, references = list(dataset["audio"]), list(dataset["text"])
    check_sample_rates(samples, loaded.feature_extractor.sampling_rate)  # before anything runs, warm-up included

    def evaluate(model: nn.Module) -> Score:
        return speech_error_rates(
            model, loaded.feature_extractor, loaded.tokenizer, samples, references, batch_size=settings.batch_size,
            normalize=settings.normalize, generate_kwargs=settings.generate_kwargs, progress=settings.progress,
        )

    def warm_up(model: nn.Module) -> None:
        first_batch = [waveform(sample) for sample in samples[: settings.batch_size]]
        transcribe(model, loaded.feature_extractor, loaded.tokenizer, first_batch, settings.generate_kwargs)

    return TaskEvaluation(evaluate, warm_up, f"{len(samples)} clips transcribed in batches of {settings.batch_size}")


def _vision(loaded: EvalModel, dataset, settings: EvalSettings) -> TaskEvaluation:
    from .vision import model_label_ids, top1_accuracy

    labels = list(dataset["label"])
    class_names = getattr(dataset.features["label"], "names", None)
    if class_names:
        label_ids = model_label_ids(class_names, loaded.model.config)
        labels = [label_ids[label] for label in labels]
    images = dataset["image"]

    def evaluate(model: nn.Module) -> Score:
        return top1_accuracy(
            model, loaded.image_processor, images, labels, batch_size=settings.batch_size, progress=settings.progress
        )

    def warm_up(model: nn.Module) -> None:
        batch = slice(0, settings.batch_size)
        top1_accuracy(model, loaded.image_processor, images[batch], labels[batch], progress=False)

    return TaskEvaluation(evaluate, warm_up, f"{len(labels)} images classified in batches of {settings.batch_size}")
