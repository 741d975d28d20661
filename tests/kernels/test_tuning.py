"""Autotuned launches: small calls are not tuned, timings go to Triton's disk cache where it has one, and
only the first launch of a key goes through the autotuner."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from kernel_reference import DEVICE

from hf_efficient_attn.kernels import flash, relaunch, tuning
from hf_efficient_attn.kernels.tuning import TunedKernel, untuned_when_small


def _recorder(requested: dict, with_cache_option: bool):
    """A stand-in for ``triton.autotune`` with or without the ``cache_results`` parameter (Triton 3.4+)."""
    if with_cache_option:
        def autotune(*, configs, key, prune_configs_by, cache_results=False):
            requested.update(configs=configs, key=key, prune=prune_configs_by, cache_results=cache_results)
            return lambda kernel: kernel
    else:
        def autotune(*, configs, key, prune_configs_by):
            requested.update(configs=configs, key=key, prune=prune_configs_by)
            return lambda kernel: kernel
    return autotune


def test_timings_are_kept_on_disk_when_triton_can(monkeypatch):
    requested: dict = {}
    monkeypatch.setattr(tuning.triton, "autotune", _recorder(requested, with_cache_option=True))
    configs = flash._fwd_configs()
    assert flash._tuned(flash._attn_fwd, configs).tuner is flash._attn_fwd
    assert requested == {"configs": configs, "key": flash._KEY, "cache_results": True,
                         "prune": {"early_config_prune": untuned_when_small}}


def test_older_triton_gets_no_cache_option(monkeypatch):
    requested: dict = {}
    monkeypatch.setattr(tuning.triton, "autotune", _recorder(requested, with_cache_option=False))
    assert flash._tuned(flash._attn_bwd_dq, flash._dq_configs()).tuner is flash._attn_bwd_dq
    assert set(requested) == {"configs", "key", "prune"}


def configs(*blocks):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=4, num_stages=3) for m, n in blocks]


def test_small_calls_run_the_64_by_64_configuration_untuned():
    listed = configs((128, 64), (64, 128), (64, 64), (128, 128))
    assert untuned_when_small(listed, {"Q": None}, TUNE_NQ=128, TUNE_NK=2048) == [listed[2]]
    assert untuned_when_small(listed, {"TUNE_NQ": 1024, "TUNE_NK": 1024}) == [listed[2]]


def test_large_calls_are_tuned_over_every_configuration():
    listed = configs((128, 64), (64, 64))
    assert untuned_when_small(listed, {}, TUNE_NQ=2048, TUNE_NK=1024) == listed
    assert untuned_when_small(listed, {}, TUNE_NQ=64, TUNE_NK=32768) == listed


def test_without_a_64_by_64_configuration_the_first_one_runs():
    listed = configs((128, 64), (64, 128))
    assert untuned_when_small(listed, {}, TUNE_NQ=64, TUNE_NK=64) == [listed[0]]


@triton.jit
def _scale(X, Y, n, factor, SIZE_CLASS, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs, mask=offs < n) * factor, mask=offs < n)


def _counting(monkeypatch, obj, calls: list):
    """Record each call of ``obj.run`` (its keyword arguments) and pass it on."""
    real = obj.run

    def run(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(obj, "run", run)


def test_the_autotuner_is_asked_once_per_key_and_its_choice_is_launched_after(monkeypatch):
    kernel = TunedKernel(_scale, [triton.Config({"BLOCK": 16}, num_warps=2, num_stages=1)], key=["SIZE_CLASS"])
    tuner_calls: list = []
    jit_calls: list = []
    _counting(monkeypatch, kernel.tuner, tuner_calls)
    _counting(monkeypatch, kernel.tuner.fn, jit_calls)

    def scale(x, factor, size_class):
        y = torch.full_like(x, float("nan"))
        kernel.launch(lambda m: (triton.cdiv(x.numel(), m["BLOCK"]),), (x, y, x.numel(), factor),
                      {"SIZE_CLASS": size_class}, x.dtype)
        return y

    x = torch.randn(37, device=DEVICE)
    for factor in (2.0, -0.5, 3.0):
        torch.testing.assert_close(scale(x, factor, size_class=1), x * factor)
    # Through Triton's launcher: the tuner's own launch, then one per call; where compiled kernels are
    # relaunched (CUDA), the third call runs the kernel the second one compiled, without the launcher.
    assert len(tuner_calls) == 1 and len(jit_calls) == (2 if relaunch.available() else 3)
    assert jit_calls[-1]["BLOCK"] == 16 and jit_calls[-1]["num_warps"] == 2

    torch.testing.assert_close(scale(x[:20], 4.0, size_class=2), x[:20] * 4.0)  # a new key asks again
    assert len(tuner_calls) == 2
    scale(x.double(), 1.0, size_class=2)  # as does a new dtype
    assert len(tuner_calls) == 3


def test_a_launch_out_of_memory_is_retried_once_after_releasing_the_cached_blocks(monkeypatch):
    """The driver reserves a spilling kernel's local memory at its first launch; PyTorch's free cached
    blocks count as taken, so the launch that fails for memory runs again after ``empty_cache``."""
    kernel = TunedKernel(_scale, [triton.Config({"BLOCK": 16}, num_warps=2, num_stages=1)], key=["SIZE_CLASS"])
    real_run = kernel.tuner.run
    failures = ["Triton Error [CUDA]: out of memory"]
    released: list = []

    def run(*args, **kwargs):
        if failures:
            raise RuntimeError(failures.pop())
        return real_run(*args, **kwargs)

    monkeypatch.setattr(kernel.tuner, "run", run)
    monkeypatch.setattr(tuning.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tuning.torch.cuda, "empty_cache", lambda: released.append(True))
    x = torch.randn(37, device=DEVICE)
    y = torch.full_like(x, float("nan"))
    kernel.launch(lambda m: (triton.cdiv(x.numel(), m["BLOCK"]),), (x, y, x.numel(), 2.0), {"SIZE_CLASS": 1}, x.dtype)
    torch.testing.assert_close(y, x * 2.0)
    assert released == [True]

    failures.extend(["Triton Error [CUDA]: out of memory"] * 2)  # fails again after the release: raised
    with pytest.raises(RuntimeError, match="out of memory"):
        kernel.launch(lambda m: (1,), (x, y, x.numel(), 2.0), {"SIZE_CLASS": 2}, x.dtype)
    failures[:] = ["Triton Error [CUDA]: an illegal memory access was encountered"]  # other errors: no retry
    with pytest.raises(RuntimeError, match="illegal memory access"):
        kernel.launch(lambda m: (1,), (x, y, x.numel(), 2.0), {"SIZE_CLASS": 3}, x.dtype)
    assert released == [True, True]
