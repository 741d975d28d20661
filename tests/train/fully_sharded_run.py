"""One rank of the fully-sharded CPU test: a patched LoRA model under FSDP2, one forward and backward.

    torchrun --standalone --nproc_per_node 2 tests/train/fully_sharded_run.py GRADIENTS.pt

Each decoder layer and the whole model are sharded with ``fully_shard`` over gloo; every rank runs its
own batch, and rank 0 saves each variant's loss per rank and the full (gathered) gradients.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parent.parent)]

from rank_exit import leave_together  # noqa: E402
from tiny_models import tiny_llama  # noqa: E402

from hf_efficient_attn import patch_model  # noqa: E402
from hf_efficient_attn.train import TrainConfig, prepare_model  # noqa: E402

VARIANTS = {"sliding": {"window": 4}, "linear": {}}


def lora_model(variant: str) -> torch.nn.Module:
    """The same patched LoRA model on every process (seeded weights and adapters), in training mode."""
    model = patch_model(tiny_llama(), variant, **VARIANTS[variant])
    torch.manual_seed(1)
    model = prepare_model(model, TrainConfig())
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # adapters start at zero; make them matter to the gradients
            torch.nn.init.normal_(parameter, std=0.1, generator=torch.Generator().manual_seed(len(name)))
    return model.train()


def batch_of(rank: int) -> torch.Tensor:
    return torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(rank))


def main(output: str) -> None:
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {}
    for variant in VARIANTS:
        model = lora_model(variant)
        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        ids = batch_of(rank)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses = [torch.zeros(()) for _ in range(dist.get_world_size())]
        dist.all_gather(losses, loss.detach())
        gradients = {name: parameter.grad.full_tensor() for name, parameter in model.named_parameters()
                     if parameter.grad is not None}
        results[variant] = {"losses": [value.item() for value in losses], "gradients": gradients}
    if rank == 0:
        torch.save(results, output)
    leave_together()


if __name__ == "__main__":
    main(sys.argv[1])
