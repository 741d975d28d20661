"""The metric that recovery fine-tuning tracks, per task, as ``metric(model) -> float`` for `train`'s callback.

Each reuses `hf_efficient_attn.eval` on data the training never sees:

- text: perplexity (strided, the transformers guide's windows) on the held-out text-en documents of
  `data.text_split`; ``max_tokens`` scores only the first tokens of that stream (``max_samples`` the
  first documents), so evaluation every few steps stays quick;
- speech: WER on the ``speech-en`` asset (``max_samples`` caps the clips);
- vision: top-1 accuracy on the ``images-mnist`` asset (``max_samples`` caps the images).

Under ``accelerate launch`` every process runs the same full evaluation and gets the same number:
under FSDP each forward needs all processes, and it saves gathering partial sums. The model is put in
eval mode for the evaluation and back in its former mode after it; speech and vision look through a
DDP wrapper (for ``generate()`` and ``config``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .config import TrainError


@dataclass
class Metric:
    """``metric(model)`` is the model's score; ``lower_is_better`` says how to read it."""

    name: str
    lower_is_better: bool
    score: Callable[[nn.Module], float] = field(repr=False)

    def __call__(self, model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        try:
            return float(self.score(model))
        finally:
            model.train(was_training)


def text_metric(
    tokenizer, texts: list[str] | None = None, *, max_length: int = 1024, stride: int | None = None,
    max_samples: int | None = None, max_tokens: int | None = None, progress: bool = False,
) -> Metric:
    """Strided perplexity on ``texts`` (default: the held-out text-en documents): the first ``max_samples``
    documents, and of those the first ``max_tokens`` tokens, where given."""
    from ..eval.perplexity import plan_perplexity, run_perplexity
    from .data import read_documents, text_split

    texts = (texts if texts is not None else read_documents(text_split().held_out))[:max_samples]
    plan = plan_perplexity(tokenizer, texts, mode="strided", max_length=max_length, stride=stride)
    if max_tokens is not None:
        if max_tokens < 2:
            raise TrainError(f"`max_tokens` must be >= 2 (a context token and a target), got {max_tokens}.")
        plan.sequences = [plan.sequences[0][:max_tokens]]
    return Metric("perplexity", True, lambda model: run_perplexity(model, plan, progress).value)


def speech_metric(
    feature_extractor, tokenizer, data: Any = None, *, max_samples: int | None = None, batch_size: int = 16,
    generate_kwargs: dict[str, Any] | None = None, progress: bool = False,
) -> Metric:
    """WER of Whisper transcripts of ``data`` (default: the speech-en asset)."""
    from ..eval.data import load_eval_data
    from ..eval.defaults import default_source
    from ..eval.speech import speech_error_rates

    dataset = load_eval_data(data if data is not None else default_source("speech", "data"), max_samples=max_samples).dataset
    samples, references = list(dataset["audio"]), list(dataset["text"])

    def score(model: nn.Module) -> float:
        return speech_error_rates(
            _unwrapped(model), feature_extractor, tokenizer, samples, references, batch_size=batch_size,
            generate_kwargs=generate_kwargs, progress=progress,
        ).value

    return Metric("wer", True, score)


def vision_metric(
    image_processor, config, data: Any = None, *, max_samples: int | None = None, batch_size: int = 64, progress: bool = False,
) -> Metric:
    """Top-1 accuracy on ``data`` (default: the images-mnist asset), labels matched to ``config``'s by class name."""
    from ..eval.data import load_eval_data
    from ..eval.defaults import default_source
    from ..eval.vision import model_label_ids, top1_accuracy

    dataset = load_eval_data(data if data is not None else default_source("vision", "data"), max_samples=max_samples).dataset
    labels = list(dataset["label"])
    names = getattr(dataset.features["label"], "names", None)
    if names:
        ids = model_label_ids(names, config)
        labels = [ids[label] for label in labels]
    images = dataset["image"]
    return Metric("accuracy", False, lambda model: top1_accuracy(_unwrapped(model), image_processor, images, labels,
                                                                 batch_size=batch_size, progress=progress).value)


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (which has no ``generate`` or ``config``); any other model as it is."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
