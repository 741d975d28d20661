"""On CUDA: SDPA's fused kernels take the masked grouped-query calls of static-cache decoding, and the
path through them equals float64 attention (the probe's answer is what SDPA then does)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_efficient_attn import sdpa_support
from hf_efficient_attn.sdpa_calls import sdpa_grouped

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the probe asks CUDA's SDPA backends")


@pytest.mark.parametrize(("batch", "keys", "head_dim"), [(1, 4128, 64), (16, 4128, 64), (2, 1000, 128)])
def test_static_step_under_a_position_mask_is_fused_and_exact(batch, keys, head_dim):
    torch.manual_seed(0)
    query = torch.randn(batch, 32, 1, head_dim, device="cuda", dtype=torch.bfloat16)
    key = torch.randn(batch, 8, keys, head_dim, device="cuda", dtype=torch.bfloat16)
    value = torch.randn_like(key)
    mask = (torch.arange(keys, device="cuda") < keys - 20)[None, None, None, :]
    assert sdpa_support.fuses_masked_call(query, key, mask)
    got = sdpa_grouped(query, key, value, mask, False, head_dim ** -0.5, 0.0)
    k64 = key.double().repeat_interleave(4, dim=1)
    v64 = value.double().repeat_interleave(4, dim=1)
    scores = (query.double() @ k64.transpose(-1, -2)) * head_dim ** -0.5
    expected = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v64
    sdpa_error = (F.scaled_dot_product_attention(query, key.repeat_interleave(4, 1), value.repeat_interleave(4, 1),
                                                 attn_mask=mask).double() - expected).abs().max()
    assert (got.double() - expected).abs().max() <= 2 * sdpa_error + 1e-3


def test_float32_or_oversized_heads_are_not_claimed_where_no_fused_kernel_exists():
    query = torch.randn(1, 32, 1, 64, device="cuda", dtype=torch.float64)
    key = torch.randn(1, 8, 256, 64, device="cuda", dtype=torch.float64)
    assert not sdpa_support.fuses_masked_call(query, key, torch.ones(1, 1, 1, 256, dtype=torch.bool, device="cuda"))
