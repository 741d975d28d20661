"""The dense kernels with query and key tiles of different sizes, as the autotuner picks on GPUs.

The other kernel tests run one square tile (16 x 16 in the interpreter); on an H100 the autotuner
chooses tiles such as 64 x 128 or 128 x 64, and the band arithmetic (`_key_ranges`, `_query_ranges`)
rounds to each edge separately. Here each kernel gets a single non-square configuration and the usual
masks are checked against the float64 reference.
"""

from __future__ import annotations

import pytest
import torch
import triton
from kernel_reference import DEVICE, LARGE, check_against_reference, rand

from hf_efficient_attn.kernels import flash, fused_attention
from hf_efficient_attn.kernels.tuning import TunedKernel

SMALL, BIG = (64, 128) if LARGE else (16, 32)

TILE_SETS = {
    "wide-keys": dict(fwd=(SMALL, BIG), dq=(SMALL, BIG), dkdv=(SMALL, BIG)),
    "wide-queries": dict(fwd=(BIG, SMALL), dq=(BIG, SMALL), dkdv=(BIG, SMALL)),
}

CASES = {
    "causal-odd": dict(b=1, hq=2, hkv=1, nq=3 * BIG + 5, nk=3 * BIG + 5, causal=True),
    "bidirectional": dict(b=1, hq=2, hkv=2, nq=2 * BIG + 3, nk=2 * BIG + 3, causal=False),
    "fewer-queries": dict(b=1, hq=4, hkv=2, nq=SMALL + 3, nk=3 * BIG + 1, causal=True),
    "window-sinks": dict(b=1, hq=2, hkv=1, nq=4 * BIG, nk=4 * BIG, causal=True, window=(BIG + 3, None),
                         sink_tokens=SMALL + 1),
    # fewer sinks than a key tile: the dK/dV programs of the sink keys own the first 16 keys, the first key
    # tile the rest of its rows (and the forward walks the sinks in a 16-key tile)
    "window-few-sinks": dict(b=1, hq=2, hkv=1, nq=3 * BIG + 5, nk=3 * BIG + 5, causal=True, window=(BIG - 3, None),
                             sink_tokens=4),
    "band-globals": dict(b=1, hq=2, hkv=2, nq=3 * BIG + 7, nk=3 * BIG + 7, causal=False,
                         window=(SMALL + 2, SMALL - 1), global_tokens=3),
}


def _single(kernel, block_m: int, block_n: int):
    # 8 warps for a 64 x 128 tile, as the tuned lists have it: with 4, the backward kernels spill registers
    # to local memory, whose reservation a GPU shared with other test processes may not be able to grow
    warps = 8 if block_m * block_n >= 64 * 128 else 4
    config = triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=1 if not LARGE else 2)
    return TunedKernel(kernel, [config], flash._KEY)


@pytest.fixture(params=sorted(TILE_SETS))
def tiles(request, monkeypatch):
    chosen = TILE_SETS[request.param]
    monkeypatch.setattr(flash, "_fwd_dense", _single(flash._attn_fwd, *chosen["fwd"]))
    monkeypatch.setattr(flash, "_dq_dense", _single(flash._attn_bwd_dq, *chosen["dq"]))
    monkeypatch.setattr(flash, "_dkdv_dense", _single(flash._attn_bwd_dkdv, *chosen["dkdv"]))
    return chosen


@pytest.mark.parametrize("name", sorted(CASES))
def test_non_square_tiles_match_reference(tiles, name):
    case = dict(CASES[name])
    b, hq, hkv, nq, nk, causal = (case.pop(key) for key in ("b", "hq", "hkv", "nq", "nk", "causal"))
    gen = torch.Generator().manual_seed(len(name))
    d = 32
    q, k, v = (rand(b, h, n, d, generator=gen) for h, n in ((hq, nq), (hkv, nk), (hkv, nk)))

    def fn(q, k, v):
        return fused_attention(q, k, v, scale=d**-0.5, causal=causal, **case)

    check_against_reference(fn, q, k, v, scale=d**-0.5, causal=causal, **case)
    for kernel, (block_m, block_n) in (("_fwd_dense", tiles["fwd"]), ("_dq_dense", tiles["dq"]),
                                       ("_dkdv_dense", tiles["dkdv"])):
        assert getattr(flash, kernel).tuner.best_config.kwargs == {"BLOCK_M": block_m, "BLOCK_N": block_n}


def test_key_padding_with_non_square_tiles(tiles):
    nk = 3 * BIG + 2
    gen = torch.Generator().manual_seed(5)
    q, k, v = (rand(2, 2, nk, 32, generator=gen) for _ in range(3))
    padding = torch.ones(2, nk, dtype=torch.bool)
    padding[0, -BIG - 1:] = False
    padding[1, :SMALL + 1] = False
    padding = padding.to(DEVICE)

    def fn(q, k, v):
        return fused_attention(q, k, v, scale=32**-0.5, causal=False, window=(BIG, BIG), key_padding=padding)

    check_against_reference(fn, q, k, v, scale=32**-0.5, causal=False, window=(BIG, BIG), key_padding=padding)
