"""Two CPU processes (DDP over gloo, started by torchrun) train like one process with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import tiny_llama
from training_batches import fresh_accelerate_state, losses, run_on_two_cpu_ranks, token_samples  # noqa: F401
from two_process_run import PER_PROCESS_BATCH, config

from hf_efficient_attn import patch_model
from hf_efficient_attn.train import train

WORKER = Path(__file__).with_name("two_process_run.py")


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    output = tmp_path / "losses.json"
    run_on_two_cpu_ranks(WORKER, [str(output)])
    distributed = json.loads(output.read_text())
    single = losses(train(patch_model(tiny_llama(), "sliding", window=6), token_samples(97, distinct=True),
                          config(2 * PER_PROCESS_BATCH)))
    assert len(distributed) == 2
    assert distributed == pytest.approx(single, abs=1e-5)
