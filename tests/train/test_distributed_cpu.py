"""Two CPU processes (DDP over gloo, through accelerate's debug launcher) train like one process."""

from __future__ import annotations

import json
import os

import pytest
from tiny_models import tiny_llama
from training_batches import fresh_accelerate_state, losses, token_samples  # noqa: F401

from hf_efficient_attn import patch_model
from hf_efficient_attn.train import TrainConfig, train

OUTPUT = "HF_EFFICIENT_ATTN_TEST_OUTPUT"


def config(batch_size: int) -> TrainConfig:
    return TrainConfig(steps=2, batch_size=batch_size, log_every=1, learning_rate=1e-2, progress=False)


def two_process_run() -> None:
    result = train(
        patch_model(tiny_llama(), "sliding", window=6), token_samples(97, distinct=True), config(2)
    )
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.environ[OUTPUT], "w") as file:
            json.dump(losses(result), file)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, monkeypatch):
    from accelerate import debug_launcher

    monkeypatch.setenv(OUTPUT, str(tmp_path / "losses.json"))
    debug_launcher(two_process_run, num_processes=2)
    distributed = json.loads((tmp_path / "losses.json").read_text())
    single = losses(
        train(patch_model(tiny_llama(), "sliding", window=6), token_samples(97, distinct=True), config(4))
    )
    assert distributed == pytest.approx(single, abs=1e-5)
