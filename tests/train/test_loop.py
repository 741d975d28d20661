"""The training loop: accumulation, checkpointing, evaluation points, mixed precision, config errors."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llama
from training_batches import fresh_accelerate_state, losses, token_samples  # noqa: F401

from hf_efficient_attn import patch_model
from hf_efficient_attn.train import TrainConfig, TrainError, train


def run(**overrides):
    config = {
        "steps": 3,
        "batch_size": 8,
        "log_every": 1,
        "learning_rate": 1e-2,
        "progress": False,
        **overrides,
    }
    model = patch_model(tiny_llama(), "sliding", window=6)
    return train(model, token_samples(97, distinct=True), TrainConfig(**config))


def test_accumulating_two_micro_batches_of_four_equals_one_batch_of_eight():
    whole = losses(run())
    accumulated = losses(run(batch_size=4, gradient_accumulation_steps=2))
    assert whole == pytest.approx(accumulated, abs=1e-5)


def test_gradient_checkpointing_gives_the_same_losses():
    assert losses(run(gradient_checkpointing=True)) == pytest.approx(losses(run()), abs=1e-5)


def test_evaluation_and_logging_points():
    calls = []
    model = patch_model(tiny_llama(), "sliding", window=6)
    config = TrainConfig(steps=5, batch_size=4, log_every=2, eval_every=2, progress=False)
    result = train(model, token_samples(97), config, evaluate=lambda m: calls.append(m.training) or 1.5)
    assert [row["step"] for row in result.history] == [0, 2, 4, 5]
    assert result.history[0]["loss"] is None and all(row["metric"] == 1.5 for row in result.history)
    assert calls == [False] * 4
    assert result.history[0]["learning_rate"] == config.learning_rate


def test_data_workers_give_the_same_losses():
    """Worker processes prepare the same batches in the same order as the training process does."""
    assert losses(run(steps=4, batch_size=4, data_workers=2)) == pytest.approx(losses(run(steps=4, batch_size=4)), abs=1e-6)


def test_warmup_then_cosine_schedule():
    result = run(steps=4, warmup_steps=2, learning_rate=1.0)
    rates = [row["learning_rate"] for row in result.history]
    assert rates == pytest.approx([1 / 3, 2 / 3, 1.0, 0.5])


def test_bf16_mixed_precision_runs():
    result = run(steps=2, mixed_precision="bf16")
    assert all(torch.isfinite(torch.tensor(losses(result))))


def test_a_mismatched_accelerator_is_refused():
    from accelerate import Accelerator

    model = patch_model(tiny_llama(), "sliding", window=6)
    with pytest.raises(TrainError, match="gradient_accumulation_steps=2"):
        train(model, token_samples(97), TrainConfig(gradient_accumulation_steps=2), accelerator=Accelerator())


def test_too_little_data_is_refused():
    model = patch_model(tiny_llama(), "sliding", window=6)
    with pytest.raises(TrainError, match="fewer than one batch"):
        train(model, token_samples(97, count=3), TrainConfig(batch_size=4))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("recipe", "qlora", "`recipe` must be one of 'lora', 'transfer', 'full', got 'qlora'"),
        ("steps", 0, "`steps` must be an integer >= 1, got 0"),
        ("batch_size", 2.5, "`batch_size` must be an integer >= 1"),
        ("mixed_precision", "fp8", "`mixed_precision` must be one of"),
        ("learning_rate", 0, "`learning_rate` must be a number > 0"),
        ("lora_dropout", 1.0, r"`lora_dropout` must be in \[0, 1\)"),
        ("warmup_steps", 500, "exceeds `steps`"),
        ("resume", True, "needs `output_dir`"),
        ("save_every", 5, "needs `output_dir`"),
        ("data_workers", -1, "`data_workers` must be an integer >= 0"),
        ("gradient_checkpointing", "yes", "`gradient_checkpointing` must be True or False"),
    ],
)
def test_bad_config_values_are_refused(field, value, message):
    with pytest.raises(TrainError, match=message):
        TrainConfig(**{field: value})
