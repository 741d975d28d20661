"""The kernels' autotuners keep their timings in Triton's disk cache where Triton supports it."""

from __future__ import annotations

from hf_efficient_attn.kernels import flash


def _recorder(requested: dict, with_cache_option: bool):
    """A stand-in for ``triton.autotune`` with or without the ``cache_results`` parameter (Triton 3.4+)."""
    if with_cache_option:
        def autotune(*, configs, key, cache_results=False):
            requested.update(configs=configs, key=key, cache_results=cache_results)
            return lambda kernel: kernel
    else:
        def autotune(*, configs, key):
            requested.update(configs=configs, key=key)
            return lambda kernel: kernel
    return autotune


def test_timings_are_kept_on_disk_when_triton_can(monkeypatch):
    requested: dict = {}
    monkeypatch.setattr(flash.triton, "autotune", _recorder(requested, with_cache_option=True))
    configs = flash._fwd_configs()
    assert flash.autotuned(flash._attn_fwd, configs) is flash._attn_fwd
    assert requested == {"configs": configs, "key": flash._KEY, "cache_results": True}


def test_older_triton_gets_no_cache_option(monkeypatch):
    requested: dict = {}
    monkeypatch.setattr(flash.triton, "autotune", _recorder(requested, with_cache_option=False))
    assert flash.autotuned(flash._attn_bwd_dq, flash._dq_configs()) is flash._attn_bwd_dq
    assert set(requested) == {"configs", "key"}
