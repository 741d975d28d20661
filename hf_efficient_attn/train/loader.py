"""The training DataLoader: samples batched in a seeded order that depends only on (seed, epoch).

The order of epoch ``e`` is a permutation drawn from a generator seeded with ``seed`` and ``e``, so a
resumed run, which sets the epoch and skips the batches already consumed, sees the same batches as
an uninterrupted one. The loader has its own generator, so starting an epoch draws nothing from the
global random state (dropout stays in step too). With `TrainConfig.data_workers`, worker processes
prepare the samples in the same order; random augmentation then draws from each worker's generator,
which the loader's generator seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized

import torch
from torch.utils.data import DataLoader, Sampler

from .config import TrainConfig, TrainError


class EpochPermutation(Sampler[int]):
    """Indices ``0..length-1`` in a random order fixed by ``seed`` and the epoch set with `set_epoch`."""

    def __init__(self, length: int, seed: int):
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())


def training_loader(
    data: object, config: TrainConfig, collate_fn: Callable | None, num_processes: int = 1
) -> DataLoader:
    """``data`` as a DataLoader: a DataLoader is used as given, anything sized is batched here."""
    if isinstance(data, DataLoader):
        return data
    if not isinstance(data, Sized):
        raise TrainError(
            f"train_data must be a DataLoader, a torch/datasets Dataset or a list of samples, got {type(data).__name__}."
        )
    needed = config.batch_size * num_processes
    if len(data) < needed:
        raise TrainError(
            f"train_data has {len(data)} samples, fewer than one batch (batch_size={config.batch_size} × "
            f"{num_processes} processes); pass more samples or a smaller batch_size."
        )
    return DataLoader(
        data,
        batch_size=config.batch_size,
        sampler=EpochPermutation(len(data), config.seed),
        collate_fn=collate_fn,
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),
        num_workers=config.data_workers,
        persistent_workers=config.data_workers > 0,
    )
