"""Distillation from the unpatched model: the patched model learns the exact model's predictions.

A recovery fine-tune learns the task set's labels; the unpatched model (the teacher) says more per
sample than a label: its whole output distribution, which is what the patched model gave before its
attention changed, and what recovery is after. `distillation_loss` is the KL divergence ``KL(teacher || student)`` of the
two models' output distributions, averaged over the positions that carry a label:

- causal LMs: logit ``t`` predicts token ``t + 1``, so position ``t`` counts where ``labels[t + 1]``
  is not -100 (transformers shifts the labels the same way for its own loss);
- encoder-decoder models (Whisper): logits and labels line up, positions with label -100 do not count;
- classifiers: one distribution per sample.

`train` mixes it with the task loss as ``(1 - w)·task + w·KL`` for ``TrainConfig.distill_weight`` w.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn

from ..api import patched_variants
from .config import TrainError

IGNORED_LABEL = -100


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    shifted: bool = False,
) -> torch.Tensor:
    """Mean ``KL(teacher || student)`` over the labelled positions, computed in float32 (or float64).

    Args:
        student_logits, teacher_logits: ``[..., classes]`` of the same shape.
        labels: ``student_logits.shape[:-1]`` labels; positions labelled -100 do not count. None: all count.
        shifted: causal LM: position ``t`` counts where ``labels[..., t + 1]`` is labelled (and the
            last position, which predicts nothing, does not).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ; "
            "the teacher must be the same model before patching (same vocabulary and labels)."
        )
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    student = F.log_softmax(student_logits.to(dtype), dim=-1)
    teacher = F.log_softmax(teacher_logits.to(dtype), dim=-1)
    per_position = (teacher.exp() * (teacher - student)).sum(-1)
    if labels is None:
        return per_position.mean()
    counted = labels != IGNORED_LABEL
    if shifted:
        counted = torch.cat([counted[..., 1:], torch.zeros_like(counted[..., :1])], dim=-1)
    if counted.shape != per_position.shape:
        raise ValueError(
            f"Labels {tuple(labels.shape)} do not match the logits' positions {tuple(per_position.shape)}."
        )
    return (per_position * counted).sum() / counted.sum().clamp(min=1)


def check_teacher(teacher: nn.Module | None, weight: float) -> None:
    """Raise `TrainError` unless a teacher comes exactly when ``weight`` asks for one, and is unpatched."""
    if weight > 0 and teacher is None:
        raise TrainError(
            f"distill_weight={weight} needs a teacher: pass teacher=<the model before patch_model> "
            "(a second copy, loaded the same way), or set distill_weight=0."
        )
    if weight == 0 and teacher is not None:
        raise TrainError("A teacher was given but distill_weight is 0; set distill_weight > 0 (e.g. 0.5) or drop the teacher.")
    if teacher is not None and patched_variants(teacher):
        raise TrainError("The teacher is patched; it must be the exact model, loaded again before patch_model.")


def distilled_loss(
    outputs, batch: dict, teacher: nn.Module, weight: float, autocast: AbstractContextManager
) -> torch.Tensor:
    """``(1 - weight)·outputs.loss + weight·KL(teacher || student)`` for one batch.

    The teacher sees the same batch without gradients, under the training autocast.
    """
    with torch.no_grad(), autocast:
        teacher_logits = teacher(**batch).logits
    logits = outputs.logits
    shifted = logits.dim() == 3 and not getattr(teacher.config, "is_encoder_decoder", False)
    kl = distillation_loss(logits, teacher_logits, batch.get("labels"), shifted=shifted)
    return (1 - weight) * outputs.loss + weight * kl
