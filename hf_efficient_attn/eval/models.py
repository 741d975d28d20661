"""A checkpoint to evaluate: the model, the task it serves, and what turns raw data into its inputs.

The task follows from ``config.model_type``: a speech sequence-to-sequence model (Whisper) is
``speech``, an image classifier (ViT) ``vision``, a causal language model (a Llama-like decoder)
``text``. Each task loads its preprocessing from the same checkpoint: a tokenizer (text), a feature
extractor and a tokenizer (speech), an image processor (vision).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import EvalInputError
from .sources import looks_like_path

TASKS = ("text", "speech", "vision")


@dataclass
class EvalModel:
    """A loaded model in eval mode, its task, and the preprocessing its task needs (others None)."""

    model: nn.Module
    task: str
    source: str
    tokenizer: Any = None
    feature_extractor: Any = None
    image_processor: Any = None


def task_of(config) -> str:
    """``"speech"``, ``"vision"`` or ``"text"`` for a model config; `EvalInputError` for other models."""
    from transformers.models.auto import modeling_auto

    model_type = getattr(config, "model_type", None)
    if model_type in modeling_auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES:
        return "speech"
    if model_type in modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return "vision"
    if model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "text"
    raise EvalInputError(
        f"Cannot tell what to evaluate for model_type={model_type!r}: evaluation covers causal language models "
        "(perplexity), speech-to-text models (WER) and image classifiers (accuracy)."
    )


def _resolve_source(source: str) -> str:
    """``source`` with ``~`` expanded if it is a path; `EvalInputError` if that path does not exist."""
    if not looks_like_path(source):
        return source
    path = Path(source).expanduser()
    if not path.exists():
        raise EvalInputError(f"The model path {source!r} does not exist; give a checkpoint folder or a Hub model name.")
    return str(path)


class _ImageProcessorLoader:
    """``AutoImageProcessor`` where this transformers release can use it without torchvision (`compat`)."""

    @staticmethod
    def from_pretrained(source: str, **kwargs):
        from ..compat import load_image_processor

        return load_image_processor(source, **kwargs)


def _load(loader, source: str, what: str, fix: str, **kwargs):
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        raise EvalInputError(f"Could not load the {what} of {source!r}: {error}\n{fix}") from error


def load_eval_model(
    source: str,
    *,
    task: str = "auto",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> EvalModel:
    """Load a checkpoint folder (or Hub name) for evaluation on ``device`` in ``dtype``.

    ``task`` ``"auto"`` takes the model's task; naming one checks that the model serves it.
    """
    import transformers

    if task != "auto" and task not in TASKS:
        raise EvalInputError(f"task must be 'auto' or one of {', '.join(TASKS)}, got {task!r}.")
    source = _resolve_source(str(source))
    config = _load(transformers.AutoConfig, source, "config", "Give a folder written by save_pretrained, or a Hub model name.")
    model_task = task_of(config)
    if task not in ("auto", model_task):
        raise EvalInputError(
            f"task={task!r}, but {source!r} is a {config.model_type} model, which is evaluated as {model_task!r}; "
            f"use task='auto' or {model_task!r}, or give a {task} model."
        )
    model_class = {
        "text": transformers.AutoModelForCausalLM,
        "speech": transformers.AutoModelForSpeechSeq2Seq,
        "vision": transformers.AutoModelForImageClassification,
    }[model_task]
    model = _load(model_class, source, "weights", "Give a folder written by save_pretrained.", dtype=dtype)
    loaded = EvalModel(model=model.to(device).eval(), task=model_task, source=source)
    save_fix = f"Save it into the model folder, e.g. {{}}.save_pretrained({source!r})."
    if model_task in ("text", "speech"):
        loaded.tokenizer = _load(transformers.AutoTokenizer, source, "tokenizer", save_fix.format("tokenizer"))
    if model_task == "speech":
        loaded.feature_extractor = _load(
            transformers.AutoFeatureExtractor, source, "feature extractor", save_fix.format("feature_extractor")
        )
    if model_task == "vision":
        loaded.image_processor = _load(
            _ImageProcessorLoader, source, "image processor", save_fix.format("image_processor")
        )
    return loaded
