"""`RecoveryTrainer`: the recipes' distillation loss and attention transfer on transformers' own Trainer."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_llama
from training_batches import fresh_accelerate_state, token_samples  # noqa: F401
from transformers import TrainingArguments

from hf_efficient_attn import patch_model
from hf_efficient_attn.api import patched_variants
from hf_efficient_attn.train import TrainConfig, TrainError, prepare_model
from hf_efficient_attn.train.trainer import RecoveryTrainer


def arguments(tmp_path, **overrides) -> TrainingArguments:
    values = dict(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                  report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, disable_tqdm=True)
    return TrainingArguments(**{**values, **overrides})


def reference_distilled_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, weight: float) -> torch.Tensor:
    """(1 - w)·cross-entropy + w·KL(teacher || student) over the shifted labelled positions, in float64."""
    student, teacher = student[:, :-1].double(), teacher[:, :-1].double()
    targets = labels[:, 1:]
    kept = targets != -100
    cross_entropy = torch.nn.functional.cross_entropy(student[kept], targets[kept])
    p_teacher = teacher.log_softmax(-1)
    kl = (p_teacher.exp() * (p_teacher - student.log_softmax(-1))).sum(-1)[kept].mean()
    return (1 - weight) * cross_entropy + weight * kl


def test_the_distilled_loss_is_the_mix_of_task_loss_and_kl(tmp_path):
    teacher = tiny_llama()
    model = prepare_model(patch_model(copy.deepcopy(teacher), "sliding", window=4), TrainConfig(lora_rank=4))
    with torch.no_grad():  # move LoRA away from zero so student and teacher differ beyond the window
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    samples = token_samples(97, distinct=True)
    trainer = RecoveryTrainer(model=model, args=arguments(tmp_path), train_dataset=samples, teacher=teacher,
                              distill_weight=0.3)
    batch = {key: torch.stack([sample[key] for sample in samples[:4]]) for key in ("input_ids", "labels")}
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        expected = reference_distilled_loss(model(**batch).logits, teacher(**batch).logits, batch["labels"], 0.3)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert trainer.train().global_step == 2


def test_attention_transfer_runs_before_training_and_only_once(tmp_path):
    model = prepare_model(patch_model(tiny_llama(), "linear"), TrainConfig(lora_rank=4))
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    trainer = RecoveryTrainer(model=model, args=arguments(tmp_path, max_steps=1), train_dataset=token_samples(97),
                              transfer_steps=3)
    trainer.train()
    assert len(trainer.transfer_losses) == 3 and trainer.transfer_losses[-1] < trainer.transfer_losses[0]
    variant = {name for name, _ in model.named_parameters() if ".efficient_attn." in name}
    changed = {name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])}
    assert changed & variant, "the transfer trained the variant's parameters"
    trainer.train()
    assert len(trainer.transfer_losses) == 3


def test_a_teacher_is_required_for_distillation_and_must_be_unpatched(tmp_path):
    model = prepare_model(patch_model(tiny_llama(), "sliding", window=4), TrainConfig(lora_rank=4))
    with pytest.raises(TrainError):
        RecoveryTrainer(model=model, args=arguments(tmp_path), train_dataset=token_samples(97), distill_weight=0.5)
    with pytest.raises(TrainError):
        RecoveryTrainer(model=model, args=arguments(tmp_path), train_dataset=token_samples(97), distill_weight=0.5,
                        teacher=patch_model(tiny_llama(), "sliding", window=4))
    assert patched_variants(model)
