"""Autotuned launches: Triton's autotuner chooses a configuration once per key, later launches skip it.

Triton's ``Autotuner.run`` rebuilds a dictionary of every argument on each call, testing each name
against the list of all names: host work quadratic in the argument count. Our kernels take about sixty
arguments, and at short lengths that bookkeeping costs more than the GPU work of the kernel.
`TunedKernel` asks the autotuner only the first time it meets a key, remembers the configuration it
chose, and launches later calls with that key with the chosen block sizes, warps and stages through
`relaunch.Relauncher`, which skips Triton's own binding of the arguments for a call it has seen: the
same compiled kernel the autotuner would have launched.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
import triton

from .relaunch import BoundLaunch, Relauncher

UNTUNED_WORK = 1024 * 1024
"""Calls whose bucketed query × key lengths are at most this run one fixed configuration, untuned: their
kernels take microseconds, while tuning compiles and times every configuration (seconds), and again for
each new shape bucket (each decoder length met in training, each cross-attention)."""


def untuned_when_small(configs: list, named_args: dict, **kwargs) -> list:
    """Autotuner pruning hook: the 64 x 64 configuration alone for small calls, every one otherwise."""
    args = {**named_args, **kwargs}
    if args["TUNE_NQ"] * args["TUNE_NK"] > UNTUNED_WORK:
        return configs
    small = [c for c in configs if c.kwargs.get("BLOCK_M") == 64 and c.kwargs.get("BLOCK_N") == 64]
    return (small or configs)[:1]


class TunedKernel:
    """``kernel`` autotuned over ``configs`` per the arguments named in ``key``, pruned by ``prune``.

    Where Triton can (3.4 and later), the autotuner keeps its timings in Triton's on-disk cache, so a new
    process reuses the choices an earlier one measured instead of compiling and timing every
    configuration again for each shape it meets.
    """

    def __init__(self, kernel, configs: list, key: Sequence[str], prune: Callable | None = None):
        options = {"prune_configs_by": {"early_config_prune": prune}} if prune is not None else {}
        if "cache_results" in inspect.signature(triton.autotune).parameters:
            options["cache_results"] = True
        self.tuner = triton.autotune(configs=configs, key=list(key), **options)(kernel)
        self._relaunch = Relauncher(self.tuner.fn)
        self._chosen: dict[tuple, tuple[dict, tuple]] = {}

    def launch(self, grid: tuple | Callable[[dict], tuple], args: tuple, meta: dict, dtype) -> None:
        """Run the kernel over ``grid`` with positional ``args`` and keyword ``meta``, which must hold every
        argument named in the key. ``dtype`` (the inputs' dtype) completes the key, as the autotuner's
        own key has the dtypes of the tensor arguments."""
        try:
            self._launch(grid, args, meta, dtype)
        except RuntimeError as error:
            if not launch_out_of_memory(error):
                raise
            torch.cuda.empty_cache()
            self._launch(grid, args, meta, dtype)

    def bind(self, grid: tuple | Callable[[dict], tuple], args: tuple, meta: dict, dtype,
             varying: tuple[int, ...]) -> BoundLaunch | None:
        """`launch`'s call ``(grid, args, meta)``, made before, bound with the tensors at positions
        ``varying`` to be given anew (`relaunch.BoundLaunch`); None where it cannot be bound."""
        chosen = self._chosen.get((dtype, *meta.items()))
        if chosen is None:
            return None
        kwargs, kwargs_key = chosen
        return self._relaunch.bind(grid, args, kwargs, kwargs_key, varying)

    def _launch(self, grid: tuple | Callable[[dict], tuple], args: tuple, meta: dict, dtype) -> None:
        key = (dtype, *meta.items())
        chosen = self._chosen.get(key)
        if chosen is None:
            self.tuner[grid](*args, **meta)
            config = self.tuner.best_config.all_kwargs()
            self._chosen[key] = ({**meta, **config}, (*key, *config.items()))
        else:
            kwargs, kwargs_key = chosen
            self._relaunch(grid, args, kwargs, kwargs_key)


def launch_out_of_memory(error: RuntimeError) -> bool:
    """Whether a kernel launch failed because the driver could not reserve the kernel's local memory.

    A kernel that spills registers needs local memory for every thread the GPU can hold, reserved when
    it is first launched; on a GPU whose memory is nearly all taken the launch fails with CUDA's "out of
    memory" (Triton: ``Triton Error [CUDA]: out of memory``). Memory that PyTorch's caching allocator
    holds free counts as taken, so `TunedKernel.launch` releases it (``torch.cuda.empty_cache``, as
    PyTorch does before it reports an allocation out of memory) and launches once more; a launch that
    failed ran nothing."""
    return "[CUDA]: out of memory" in str(error) and torch.cuda.is_available()
