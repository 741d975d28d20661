"""Two CPU processes (started by torchrun, over gloo) train like one process: DDP through `train`, and FSDP2 sharding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fully_sharded_run import batch_of, lora_model
from tiny_models import tiny_llama
from training_batches import fresh_accelerate_state, losses, run_on_two_cpu_ranks, token_samples  # noqa: F401
from two_process_run import PER_PROCESS_BATCH, config

from hf_efficient_attn import patch_model
from hf_efficient_attn.train import train

WORKER = Path(__file__).with_name("two_process_run.py")
SHARDED_WORKER = Path(__file__).with_name("fully_sharded_run.py")


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    output = tmp_path / "losses.json"
    run_on_two_cpu_ranks(WORKER, [str(output)])
    distributed = json.loads(output.read_text())
    single = losses(train(patch_model(tiny_llama(), "sliding", window=6), token_samples(97, distinct=True),
                          config(2 * PER_PROCESS_BATCH)))
    assert len(distributed) == 2
    assert distributed == pytest.approx(single, abs=1e-5)


def test_fully_sharded_lora_matches_one_process(tmp_path):
    """FSDP2 (what accelerate's FSDP runs) over two CPU ranks: losses and averaged gradients as one process."""
    output = tmp_path / "gradients.pt"
    run_on_two_cpu_ranks(SHARDED_WORKER, [str(output)])
    sharded = torch.load(output)
    for variant, result in sharded.items():
        model = lora_model(variant)
        losses = [model(input_ids=batch_of(rank), labels=batch_of(rank)).loss for rank in range(2)]
        (sum(losses) / 2).backward()
        assert result["losses"] == pytest.approx([loss.item() for loss in losses], abs=1e-6)
        expected = {name: parameter.grad for name, parameter in model.named_parameters() if parameter.grad is not None}
        assert set(result["gradients"]) == set(expected) and any("lora_A" in name for name in expected)
        for name, gradient in expected.items():
            assert torch.allclose(result["gradients"][name], gradient, atol=1e-6, rtol=1e-4), (variant, name)
