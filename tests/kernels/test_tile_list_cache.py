"""The tile-list cache of block layouts: reused for the same layout tensor, rebuilt when it changes."""

from __future__ import annotations

import gc

import pytest
import torch
from kernel_reference import DEVICE, rand, reference

from hf_efficient_attn.kernels import function as kernel_function
from hf_efficient_attn.kernels import fused_attention
from hf_efficient_attn.kernels.function import TILE_LISTS


@pytest.fixture
def builds(monkeypatch):
    """Counts calls of build_tile_lists, starting from an empty cache."""
    TILE_LISTS.clear()
    calls = []
    real = kernel_function.build_tile_lists

    def counting(*args, **kwargs):
        calls.append(args[1:4])
        return real(*args, **kwargs)

    monkeypatch.setattr(kernel_function, "build_tile_lists", counting)
    yield calls
    TILE_LISTS.clear()


def inputs(n=48, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [rand(1, 2, n, 32, dtype=torch.float32, generator=gen) for _ in range(3)]


def layout_of(bits):
    return torch.tensor(bits, dtype=torch.bool, device=DEVICE)[None]


def expected(q, k, v, layout, lb=16):
    return reference(q, k, v, scale=0.2, causal=False, block_layout=layout, layout_block_size=lb).detach()


def attend(q, k, v, layout, lb=16):
    return fused_attention(q, k, v, scale=0.2, causal=False, block_layout=layout, layout_block_size=lb).detach()


def test_same_layout_tensor_builds_once(builds):
    q, k, v = inputs()
    layout = layout_of([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    first = attend(q, k, v, layout)
    second = attend(q, k, v, layout)
    assert len(builds) == 1
    assert torch.equal(first, second)
    torch.testing.assert_close(second.double(), expected(q, k, v, layout), atol=2e-5, rtol=1e-4)


def test_other_lengths_or_block_sizes_get_their_own_lists(builds):
    q, k, v = inputs()
    layout = layout_of([[1, 0, 1], [0, 1, 0], [1, 1, 1]])
    attend(q, k, v, layout)
    attend(q[:, :, :40], k[:, :, :40], v[:, :, :40], layout)
    torch.testing.assert_close(attend(q[:, :, :24], k[:, :, :24], v[:, :, :24], layout, lb=8).double(),
                               expected(q[:, :, :24], k[:, :, :24], v[:, :, :24], layout, lb=8), atol=2e-5, rtol=1e-4)
    assert len(builds) == 3


def test_in_place_edit_of_the_layout_rebuilds(builds):
    q, k, v = inputs()
    layout = layout_of([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    attend(q, k, v, layout)
    layout[0, 0, 2] = True
    out = attend(q, k, v, layout)
    assert len(builds) == 2
    torch.testing.assert_close(out.double(), expected(q, k, v, layout), atol=2e-5, rtol=1e-4)


def test_equal_but_distinct_layout_tensors_are_not_confused(builds):
    q, k, v = inputs()
    a = layout_of([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    b = layout_of([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    out_a, out_b = attend(q, k, v, a), attend(q, k, v, b)
    assert len(builds) == 2
    torch.testing.assert_close(out_b.double(), expected(q, k, v, b), atol=2e-5, rtol=1e-4)
    assert not torch.allclose(out_a, out_b)


def test_inference_tensors_are_never_cached(builds):
    q, k, v = inputs()
    with torch.inference_mode():
        layout = layout_of([[1, 1, 0], [0, 1, 0], [0, 1, 1]])
    attend(q, k, v, layout)
    with torch.inference_mode():
        layout[0, 1, 0] = True
    out = attend(q, k, v, layout)
    assert len(builds) == 2 and len(TILE_LISTS) == 0
    torch.testing.assert_close(out.double(), expected(q, k, v, layout), atol=2e-5, rtol=1e-4)


def test_freed_layouts_leave_the_cache(builds):
    q, k, v = inputs()
    layout = layout_of([[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    attend(q, k, v, layout)
    assert len(TILE_LISTS) == 1
    del layout
    gc.collect()
    assert len(TILE_LISTS) == 0


def test_rows_of_one_run_of_full_tiles_get_its_bounds():
    """A row whose full key tiles are consecutive gets their bounds (the forward walks them as a range);
    a row of several runs, or of none, gets an empty range and keeps its list."""
    from hf_efficient_attn.kernels.sparsity import build_tile_lists

    layout = (torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(4)) > 0.4).to(torch.int8)
    layout[0, 2:4] = 1  # head 0's query tile 1 (positions 32-63) sees every key: one run
    layout[1, 0:2] = torch.tensor([0, 1, 1, 0, 0, 1, 0, 0])  # head 1's query tile 0: two runs
    tiles = build_tile_lists(layout, 16, 128, 128, causal=False, has_window=False, wl=0, wr=0, sink=0, gq=0,
                             block_m=32, block_n=16)
    single_rows = 0
    for row in range(2 * tiles.n_mt):
        listed = tiles.fwd_cols_full[tiles.fwd_rp_full[row]:tiles.fwd_rp_full[row + 1]].tolist()
        start, stop = int(tiles.fwd_run_start[row]), int(tiles.fwd_run_stop[row])
        one_run = bool(listed) and listed == list(range(listed[0], listed[-1] + 1))
        assert (start, stop) == ((listed[0], listed[-1] + 1) if one_run else (0, 0))
        single_rows += one_run
    assert (int(tiles.fwd_run_start[1]), int(tiles.fwd_run_stop[1])) == (0, 8)
    assert int(tiles.fwd_run_stop[tiles.n_mt]) == 0  # head 1, query tile 0: two runs keep the list
    assert 0 < single_rows < 2 * tiles.n_mt
