"""One rank of the two-process CPU training test; run by torchrun, rank 0 writes the logged losses.

    ACCELERATE_USE_CPU=true torchrun --standalone --nproc_per_node 2 tests/train/two_process_run.py LOSSES.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]

from rank_exit import leave_together  # noqa: E402
from tiny_models import tiny_llama  # noqa: E402
from training_batches import losses, token_samples  # noqa: E402

from hf_efficient_attn import patch_model  # noqa: E402
from hf_efficient_attn.train import TrainConfig, train  # noqa: E402

PER_PROCESS_BATCH = 2


def config(batch_size: int) -> TrainConfig:
    """The run's options; the single-process reference uses the same with both ranks' batch."""
    return TrainConfig(steps=2, batch_size=batch_size, log_every=1, learning_rate=1e-2, progress=False)


def main(output: str) -> None:
    torch.set_num_threads(1)
    result = train(patch_model(tiny_llama(), "sliding", window=6), token_samples(97, distinct=True), config(PER_PROCESS_BATCH))
    if int(os.environ.get("RANK", "0")) == 0:
        Path(output).write_text(json.dumps(losses(result)))
    leave_together()


if __name__ == "__main__":
    main(sys.argv[1])
