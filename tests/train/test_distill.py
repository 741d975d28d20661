"""Distillation from the unpatched model: the loss against float64 KL sums, and training that lowers it."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llama, tiny_vit, tiny_whisper
from training_batches import fresh_accelerate_state, image_samples, losses, speech_samples, token_samples  # noqa: F401

from hf_efficient_attn import patch_model
from hf_efficient_attn.train import TrainConfig, TrainError, train
from hf_efficient_attn.train.distill import distillation_loss


def kl_rows(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of each row of logits, in float64, from the definition."""
    p = torch.softmax(teacher.double(), -1)
    q = torch.softmax(student.double(), -1)
    return (p * (p.log() - q.log())).sum(-1)


def test_causal_positions_count_where_the_next_token_is_labelled():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 2, 5, 7, generator=generator).unbind(0)
    labels = torch.tensor([[4, 5, 6, -100, -100], [-100, 1, 2, 3, 4]])
    rows = kl_rows(student, teacher)
    # Logit t predicts label t + 1: row 0 counts t = 0, 1; row 1 counts t = 0 .. 3.
    expected = (rows[0, :2].sum() + rows[1, :4].sum()) / 6
    got = distillation_loss(student, teacher, labels, shifted=True)
    assert abs(got.item() - expected.item()) < 1e-6


def test_aligned_positions_and_classifiers():
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 3, 4, 9, generator=generator).unbind(0)
    labels = torch.tensor([[1, 2, -100, -100], [3, -100, -100, -100], [1, 1, 1, 1]])
    rows = kl_rows(student, teacher)
    expected = rows[labels != -100].mean()
    assert abs(distillation_loss(student, teacher, labels).item() - expected.item()) < 1e-6
    classes_student, classes_teacher = student[:, 0], teacher[:, 0]
    expected = kl_rows(classes_student, classes_teacher).mean()
    assert abs(distillation_loss(classes_student, classes_teacher, torch.tensor([0, 1, 2])).item() - expected.item()) < 1e-6
    assert distillation_loss(teacher, teacher, labels).abs().item() < 1e-6


def test_mismatched_logits_are_refused():
    with pytest.raises(ValueError, match="same model before patching"):
        distillation_loss(torch.zeros(2, 5), torch.zeros(2, 6))


def quick(**overrides) -> TrainConfig:
    return TrainConfig(**{"steps": 6, "batch_size": 4, "log_every": 1, "learning_rate": 1e-2, "progress": False,
                          "distill_weight": 1.0, **overrides})


def kl_to_teacher(student, teacher, batch: dict, shifted: bool) -> float:
    with torch.no_grad():
        return distillation_loss(student(**batch).logits, teacher(**batch).logits, batch["labels"], shifted=shifted).item()


def test_pure_distillation_moves_a_patched_llama_towards_the_exact_one():
    samples = token_samples(97, distinct=True)
    batch = {key: torch.stack([sample[key] for sample in samples]) for key in ("input_ids", "labels")}
    sharp = {"initializer_range": 0.2}  # peaked predictions, so that the window changes them
    teacher = tiny_llama(**sharp)
    student = patch_model(tiny_llama(**sharp), "sliding", window=2)
    before = kl_to_teacher(student, teacher, batch, shifted=True)
    teacher_weights = {name: value.clone() for name, value in teacher.state_dict().items()}
    result = train(student, samples, quick(recipe="full", learning_rate=3e-3), teacher=teacher)
    after = kl_to_teacher(result.model, teacher, batch, shifted=True)
    curve = losses(result)
    assert before > 0.5 and after < 0.7 * before
    assert curve[-1] < curve[0]
    assert all(torch.equal(value, teacher_weights[name]) for name, value in teacher.state_dict().items())


def test_mixed_loss_trains_whisper_and_vit_with_lora():
    whisper = patch_model(tiny_whisper(), "sliding", window=2, targets="encoder")
    result = train(whisper, speech_samples(whisper), quick(distill_weight=0.5), teacher=tiny_whisper())
    curve = losses(result)
    assert curve[-1] < curve[0]
    vit = patch_model(tiny_vit(), "lowrank", rank=2)
    result = train(vit, image_samples(vit), quick(distill_weight=0.5), teacher=tiny_vit())
    curve = losses(result)
    assert curve[-1] < curve[0]


def test_teacher_and_weight_must_come_together():
    model = patch_model(tiny_llama(), "sliding", window=4)
    samples = token_samples(97)
    with pytest.raises(TrainError, match="needs a teacher"):
        train(model, samples, quick())
    with pytest.raises(TrainError, match="distill_weight is 0"):
        train(model, samples, quick(distill_weight=0.0), teacher=tiny_llama())
    with pytest.raises(TrainError, match="teacher is patched"):
        train(model, samples, quick(), teacher=patch_model(tiny_llama(), "sliding", window=4))
    with pytest.raises(TrainError, match=r"distill_weight.*\[0, 1\]"):
        TrainConfig(distill_weight=1.5)
