"""Shared pieces of the training tests: fixed samples for tiny models and a clean accelerate state."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test builds its own Accelerator (mixed precision, accumulation) from a clean global state.

    Tiny models run faster on one thread than on shared cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    torch.set_num_threads(threads)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def token_samples(vocab_size: int, count: int = 8, length: int = 16, distinct: bool = False) -> list[dict]:
    """Causal-LM samples; the same sequence repeated unless ``distinct``."""
    generator = torch.Generator().manual_seed(3)
    ids = [
        torch.randint(3, vocab_size, (length,), generator=generator) for _ in range(count if distinct else 1)
    ]
    return [{"input_ids": ids[i % len(ids)], "labels": ids[i % len(ids)]} for i in range(count)]


def image_samples(model, count: int = 8) -> list[dict]:
    """ViT classification samples: one fixed image and label, repeated."""
    size = model.config.image_size
    pixels = torch.randn(3, size, size, generator=torch.Generator().manual_seed(5))
    return [{"pixel_values": pixels, "labels": torch.tensor(1)} for _ in range(count)]


def speech_samples(model, count: int = 4) -> list[dict]:
    """Whisper samples: one fixed log-mel input and transcript, repeated."""
    frames = model.config.max_source_positions * 2
    generator = torch.Generator().manual_seed(6)
    features = torch.randn(model.config.num_mel_bins, frames, generator=generator)
    labels = torch.randint(3, model.config.vocab_size, (6,), generator=generator)
    return [{"input_features": features, "labels": labels} for _ in range(count)]


def losses(result) -> list[float]:
    """The logged losses of a run, in step order."""
    return [row["loss"] for row in result.history if row["loss"] is not None]


def run_on_two_cpu_ranks(script: Path, arguments: list[str]) -> None:
    """Run ``script`` as two DDP ranks over gloo under torchrun; raise if it fails or takes over 300 s.

    On a machine without an accelerator, accelerate joins torchrun's process group only when told to
    use the CPU.
    """
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    str(script), *arguments], check=True, timeout=300, env=environment)
