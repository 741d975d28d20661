"""The kernels' autotuners: small calls are not tuned, and timings go to Triton's disk cache where it has one."""

from __future__ import annotations

import triton

from hf_efficient_attn.kernels import flash


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
    monkeypatch.setattr(flash.triton, "autotune", _recorder(requested, with_cache_option=True))
    configs = flash._fwd_configs()
    assert flash.autotuned(flash._attn_fwd, configs) is flash._attn_fwd
    assert requested == {"configs": configs, "key": flash._KEY, "cache_results": True,
                         "prune": {"early_config_prune": flash.untuned_when_small}}


def test_older_triton_gets_no_cache_option(monkeypatch):
    requested: dict = {}
    monkeypatch.setattr(flash.triton, "autotune", _recorder(requested, with_cache_option=False))
    assert flash.autotuned(flash._attn_bwd_dq, flash._dq_configs()) is flash._attn_bwd_dq
    assert set(requested) == {"configs", "key", "prune"}


def configs(*blocks):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=4, num_stages=3) for m, n in blocks]


def test_small_calls_run_the_64_by_64_configuration_untuned():
    listed = configs((128, 64), (64, 128), (64, 64), (128, 128))
    assert flash.untuned_when_small(listed, {"Q": None}, TUNE_NQ=128, TUNE_NK=2048) == [listed[2]]
    assert flash.untuned_when_small(listed, {"TUNE_NQ": 1024, "TUNE_NK": 1024}) == [listed[2]]


def test_large_calls_are_tuned_over_every_configuration():
    listed = configs((128, 64), (64, 64))
    assert flash.untuned_when_small(listed, {}, TUNE_NQ=2048, TUNE_NK=1024) == listed
    assert flash.untuned_when_small(listed, {}, TUNE_NQ=64, TUNE_NK=32768) == listed


def test_without_a_64_by_64_configuration_the_first_one_runs():
    listed = configs((128, 64), (64, 128))
    assert flash.untuned_when_small(listed, {}, TUNE_NQ=64, TUNE_NK=64) == [listed[0]]
