"""A launch over a gather of query blocks of a bidirectional call under a block layout (``layout_rows``):
each gathered block sees its own layout row, as in the call over every query."""

from __future__ import annotations

import pytest
import torch
from kernel_reference import DEVICE, reference

from hf_efficient_attn.kernels import KernelInputError
from hf_efficient_attn.kernels.ops import DenseLaunch
from hf_efficient_attn.variants import block_layout as layouts

BLOCK = 16
LAYOUT = torch.tensor(
    [
        [[1, 1, 1, 1, 1], [1, 1, 0, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 1], [1, 0, 1, 1, 1]],
        [[1, 1, 1, 1, 1], [1, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 1], [1, 1, 0, 1, 1]],
    ],
    dtype=torch.bool,
)
NAME = layouts.register_layout("test:layout-rows", lambda blocks, causal: LAYOUT, fixed_blocks=5)


def launch(rows, causal=False):
    return DenseLaunch(layout_rows=rows, scale=0.2, causal=causal, window=(None, None), sink_tokens=0,
                       global_tokens=0, layout=NAME, layout_blocks=5, layout_block_size=BLOCK, key_padding=None,
                       documents=None)


def states(n=72, seed=0):
    """q, k, v of 2 heads over ``n`` tokens: 5 blocks of 16, the last one 8 long."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 2, n, 32, generator=generator).to(DEVICE) for _ in range(3)]


def query_positions(rows, n=72):
    return torch.cat([torch.arange(row * BLOCK, min(row * BLOCK + BLOCK, n)) for row in rows]).to(DEVICE)


@pytest.mark.parametrize("rows", [(1, 3, 4), (1,), (0, 2), (4,)])
def test_gathered_blocks_see_their_own_layout_rows(rows):
    q, k, v = states()
    picked = query_positions(rows)
    full = reference(q, k, v, scale=0.2, causal=False, block_layout=LAYOUT.to(DEVICE), layout_block_size=BLOCK)
    out = launch(rows)(q[:, :, picked], k, v)
    torch.testing.assert_close(out.double(), full[:, :, picked], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "rows, causal, message",
    [((1, 3), True, "causal=False"), ((3, 1), False, "increasing"), ((1, 1), False, "increasing"),
     ((1, 5), False, "increasing"), ((1,), False, "cannot hold")],
)
def test_rows_that_do_not_describe_the_queries_are_refused(rows, causal, message):
    q, k, v = states()
    picked = query_positions((1, 3))
    with pytest.raises(KernelInputError, match=message):
        launch(rows, causal)(q[:, :, picked], k, v)
