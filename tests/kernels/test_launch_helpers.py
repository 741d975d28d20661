"""Host-side launch helpers of the kernels: plain-Python powers of two, the shared placeholder tensor, and
inference calls that skip autograd."""

from __future__ import annotations

import torch
import triton
from kernel_reference import DEVICE, rand, reference, rel_err, tolerance

from hf_efficient_attn.kernels import flash, function, fused_attention, fused_attention_varlen


def test_power_of_2_at_least_matches_triton():
    for n in range(1, 5000):
        assert flash.power_of_2_at_least(n) == triton.next_power_of_2(n), n
    assert flash.power_of_2_at_least(0) == 1


def test_placeholder_tensor_is_made_once_per_device_and_stays_zero():
    first = flash._dummy(torch.device("cpu"))
    assert flash._dummy("cpu") is first
    assert first.dtype == torch.int32 and first.tolist() == [0]


def test_layout_lookup_only_where_a_tile_can_straddle_layout_blocks():
    layout = torch.ones(1, 4, 4, dtype=torch.int8)

    def lookup(lb, tile, nq, nk, causal=True, varlen=False, with_layout=True):
        mask = flash.MaskArgs(causal=causal, window=(None, None), sink_tokens=0, global_tokens=0,
                              layout=layout if with_layout else None, layout_block_size=lb)
        return flash.layout_lookup(mask, *tile, nq, nk, varlen)

    assert not lookup(128, (128, 64), 2048, 2048)  # a prompt: tiles inside 128-token blocks
    assert not lookup(128, (128, 64), 1500, 1500, causal=False)  # a partial last tile still starts on an edge
    assert not lookup(128, (128, 64), 100, 612)  # causal offset 512, a multiple of the query tile
    assert lookup(128, (128, 64), 100, 600)  # offset 500: query tiles straddle block rows
    assert not lookup(128, (128, 64), 100, 600, causal=False)  # no offset without causality
    assert lookup(64, (128, 64), 256, 256)  # tiles taller than the layout blocks
    assert lookup(96, (64, 64), 256, 256)  # tiles not dividing the blocks
    assert lookup(128, (128, 64), 2048, 2048, varlen=True)  # packed documents: offsets per document
    assert not lookup(128, (128, 64), 2048, 2048, with_layout=False)  # nothing to look up


def test_inference_calls_go_straight_to_the_forward_kernel(monkeypatch):
    def no_autograd(*args):
        raise AssertionError("an inference call built an autograd node")

    gen = torch.Generator().manual_seed(3)
    q, k, v = (rand(2, 2, 37, 32, generator=gen) for _ in range(3))
    expected = reference(q, k, v, scale=32**-0.5, causal=True, window=(9, None))
    monkeypatch.setattr(function._FusedAttention, "apply", no_autograd)
    with torch.no_grad():
        out = fused_attention(q, k, v, scale=32**-0.5, causal=True, window=(9, None))
    assert out.grad_fn is None and rel_err(out, expected) < tolerance(torch.float32)
    plain = [t.detach() for t in (q, k, v)]  # nothing asks for a gradient, even with grad mode on
    out = fused_attention(*plain, scale=32**-0.5, causal=True, window=(9, None))
    assert out.grad_fn is None and rel_err(out, expected) < tolerance(torch.float32)

    packed = [t.detach()[0].transpose(0, 1).contiguous() for t in (q, k, v)]  # one sequence, [T, H, D]
    cu = torch.tensor([0, 37], dtype=torch.int32, device=DEVICE)
    out = fused_attention_varlen(*packed, cu, cu, 37, 37, scale=32**-0.5, causal=True, window=(9, None))
    assert rel_err(out.transpose(0, 1), expected[0]) < tolerance(torch.float32)
