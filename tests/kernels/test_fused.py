"""fused_attention against the float64 reference: outputs and dq, dk, dv."""

from __future__ import annotations

import pytest
import torch
from kernel_reference import DEVICE, LARGE, check_against_reference, rand, reference

from hf_efficient_attn.kernels import fused_attention


def run_case(b, hq, hkv, nq, nk, d, *, causal, dtype=torch.float32, seed=0, **mask_kw):
    gen = torch.Generator().manual_seed(seed)
    q = rand(b, hq, nq, d, dtype=dtype, generator=gen)
    k = rand(b, hkv, nk, d, dtype=dtype, generator=gen)
    v = rand(b, hkv, nk, d, dtype=dtype, generator=gen)
    scale = d**-0.5

    def fn(q, k, v):
        return fused_attention(q, k, v, scale=scale, causal=causal, **mask_kw)

    return check_against_reference(fn, q, k, v, scale=scale, causal=causal, dtype=dtype, **mask_kw)


def random_layout(h, nq_pos, nk, lb, density, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (h, -(-nq_pos // lb), -(-nk // lb))
    return (torch.rand(shape, generator=gen) < density).to(DEVICE)


# ---------------------------------------------------------------------------- plain causal / full


@pytest.mark.parametrize("n", [1, 17, 64, 65, 130])
@pytest.mark.parametrize("causal", [True, False])
def test_self_attention_lengths(n, causal):
    run_case(2, 2, 1, n, n, 32, causal=causal, seed=n)


@pytest.mark.parametrize(("nq", "nk"), [(1, 70), (5, 70), (17, 130), (64, 65)])
@pytest.mark.parametrize("causal", [True, False])
def test_cache_style_fewer_queries(nq, nk, causal):
    run_case(1, 4, 2, nq, nk, 32, causal=causal, seed=nq + nk)


def test_more_queries_than_keys_causal_rows_see_nothing():
    # causal, Nq > Nk: query i has qpos = i - 20 < 0 for the first rows, which must be exactly zero
    out, grads, _ = run_case(1, 2, 2, 50, 30, 32, causal=True)
    assert out[:, :, :20].abs().max() == 0
    assert grads[0][:, :, :20].abs().max() == 0


@pytest.mark.parametrize(("hq", "hkv"), [(4, 2), (4, 1), (3, 3)])
def test_gqa_mqa(hq, hkv):
    run_case(2, hq, hkv, 40, 40, 32, causal=True, seed=hq * 10 + hkv)


@pytest.mark.parametrize("d", [64, 80, 96, 128])
def test_head_dims(d):
    run_case(1, 2, 1, 33, 33, d, causal=True, seed=d)


# ---------------------------------------------------------------------------- windows, sinks, globals


WINDOWS = [
    dict(causal=True, window=(8, None)),  # causal sliding window of 8 keys incl. itself
    dict(causal=False, window=(6, 6)),  # symmetric band
    dict(causal=False, window=(None, 3)),
    dict(causal=False, window=(20, 1)),  # == causal window, but bidirectional code path
    dict(causal=True, window=(5, None), sink_tokens=3),
    dict(causal=True, window=(16, None), sink_tokens=17),  # sinks spanning two tiles
    dict(causal=False, window=(4, 4), global_tokens=2),
    dict(causal=True, window=(7, None), sink_tokens=2, global_tokens=18),
    dict(causal=True, window=(0, None), sink_tokens=4),  # only sinks are visible
    dict(causal=False, window=(3, 2), sink_tokens=1, global_tokens=1),
]


@pytest.mark.parametrize("case", WINDOWS, ids=[str(i) for i in range(len(WINDOWS))])
@pytest.mark.parametrize(("nq", "nk"), [(65, 65), (30, 75)])
def test_windows(case, nq, nk):
    run_case(1, 4, 2, nq, nk, 32, seed=nq, **case)


# ---------------------------------------------------------------------------- key padding


@pytest.mark.parametrize("causal", [True, False])
def test_key_padding_with_fully_padded_rows(causal):
    b, nk = 3, 70
    kp = torch.ones(b, nk, dtype=torch.bool)
    kp[0, 50:] = False  # right padding
    kp[1, :] = False  # a sequence with no real key: every row must be exactly zero
    kp[2, :23] = False  # left padding: causal rows before 23 see nothing
    kp = kp.to(DEVICE)
    out, grads, _ = run_case(b, 2, 2, nk, nk, 32, causal=causal, key_padding=kp)
    assert out[1].abs().max() == 0
    for g in grads:
        assert g[1].abs().max() == 0
    if causal:
        assert out[2, :, :23].abs().max() == 0


def test_key_padding_with_window_and_gqa():
    kp = (torch.rand(2, 90, generator=torch.Generator().manual_seed(1)) > 0.3).to(DEVICE)
    run_case(2, 4, 2, 60, 90, 32, causal=True, window=(12, None), sink_tokens=2, key_padding=kp)


# ---------------------------------------------------------------------------- block layouts


@pytest.mark.parametrize(("lb", "per_head", "causal", "nq", "nk"), [
    (16, False, False, 64, 64),
    (16, True, True, 65, 65),
    (32, True, False, 50, 100),
    (64, False, True, 75, 75),  # forward tiles twice as tall as the backward's
    (24, False, True, 40, 90),  # layout blocks not aligned with kernel tiles; causal offset
    (32, True, True, 38, 102),  # causal offset 64: every tile inside one layout block (no per-element lookup)
    (32, False, True, 40, 90),  # causal offset 50: query tiles straddle layout block rows (lookup)
    (8, True, True, 130, 130),
])
def test_block_layouts(lb, per_head, causal, nq, nk):
    hq = 4
    qpos_n = nk if causal else nq
    layout = random_layout(hq if per_head else 1, qpos_n, nk, lb, 0.4, seed=lb + nq)
    run_case(1, hq, 2, nq, nk, 32, causal=causal, block_layout=layout, layout_block_size=lb, seed=lb)


def test_block_layout_with_window_sinks_and_padding():
    nq = nk = 96
    layout = random_layout(2, nk, nk, 16, 0.5, seed=3)
    layout[:, :, 0] = True
    kp = torch.ones(2, nk, dtype=torch.bool, device=DEVICE)
    kp[1, 70:] = False
    run_case(2, 2, 1, nq, nk, 32, causal=True, window=(24, None), sink_tokens=4, block_layout=layout,
             layout_block_size=16, key_padding=kp)


def test_block_layout_all_off_gives_zero():
    layout = torch.zeros(1, 4, 4, dtype=torch.bool, device=DEVICE)
    out, grads, _ = run_case(1, 2, 2, 64, 64, 32, causal=False, block_layout=layout, layout_block_size=16)
    assert out.abs().max() == 0 and all(g.abs().max() == 0 for g in grads)


def test_block_layout_dense_matches_plain_causal():
    layout = torch.ones(1, 5, 5, dtype=torch.int8, device=DEVICE)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (rand(1, 2, 70, 32, generator=gen, requires_grad=False) for _ in range(3))
    a = fused_attention(q, k, v, scale=0.2, causal=True, block_layout=layout, layout_block_size=16)
    b = fused_attention(q, k, v, scale=0.2, causal=True)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    run_case(1, 4, 2, 70, 70, 64, causal=True, window=(20, None), sink_tokens=2, dtype=dtype)


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(5)
    base = rand(2, 40, 3, 4, 32, generator=gen, requires_grad=False)  # [B, N, 3, H, D] like a fused qkv
    q, k, v = (base[:, :, i].transpose(1, 2).detach().requires_grad_() for i in range(3))
    out = fused_attention(q, k, v, scale=0.3, causal=True)
    ref = reference(q, k, v, scale=0.3, causal=True)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- larger shapes (CUDA)

LARGE_CASES = [
    dict(n=1000, d=64, causal=True),
    dict(n=4096, d=128, causal=True),
    dict(n=4096, d=64, causal=True, window=(512, None), sink_tokens=4),
    dict(n=2048, d=128, causal=False, window=(300, 300), global_tokens=16),
    dict(n=4096, d=128, causal=True, layout=0.3),
    dict(n=3000, d=64, causal=False, layout=0.2),
    dict(n=1500, d=64, causal=False, layout=0.9, lb=128),  # 128-row forward tiles, a partial last tile
    dict(n=2000, d=128, causal=True, layout=0.5, lb=256),
    dict(n=1531, d=96, causal=True),
]


@pytest.mark.skipif(not LARGE, reason="set HF_EA_TEST_LARGE=1 (meant for CUDA)")
@pytest.mark.parametrize("case", LARGE_CASES, ids=[str(i) for i in range(len(LARGE_CASES))])
def test_large_bf16(case):
    case = dict(case)
    n, d = case.pop("n"), case.pop("d")
    density, lb = case.pop("layout", None), case.pop("lb", 64)
    if density is not None:
        case["block_layout"] = random_layout(8, n, n, lb, density, seed=n)
        case["layout_block_size"] = lb
    run_case(1, 8, 2, n, n, d, dtype=torch.bfloat16, **case)
