"""Two CPU processes (DDP over gloo, started by torchrun) train like one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import tiny_llama
from training_batches import fresh_accelerate_state, losses, token_samples  # noqa: F401
from two_process_run import PER_PROCESS_BATCH

from hf_efficient_attn import patch_model
from hf_efficient_attn.train import TrainConfig, train

WORKER = Path(__file__).with_name("two_process_run.py")


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    output = tmp_path / "losses.json"
    # On a machine without an accelerator, accelerate joins torchrun's process group only when told to use the CPU.
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(WORKER), str(output)], check=True, timeout=300, env=environment)
    distributed = json.loads(output.read_text())
    config = TrainConfig(steps=2, batch_size=2 * PER_PROCESS_BATCH, log_every=1, learning_rate=1e-2, progress=False)
    single = losses(train(patch_model(tiny_llama(), "sliding", window=6), token_samples(97, distinct=True), config))
    assert len(distributed) == 2
    assert distributed == pytest.approx(single, abs=1e-5)
