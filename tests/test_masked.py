"""The chunked masked engine against float64 softmax attention when chunks have no key to gather."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from spec import dense_attention
from variants.variant_helpers import causal_padding_visible, context, qkv

from hf_efficient_attn.context import AttentionContext
from hf_efficient_attn.masked import masked_attention


@dataclass(frozen=True)
class EvenBlocksRule:
    """Queries of even blocks see the keys of their own block; queries of odd blocks see no key at all."""

    block: int

    def allowed(
        self, context: AttentionContext, query_positions: torch.Tensor, key_positions: torch.Tensor
    ) -> torch.Tensor:
        query_blocks, key_blocks = query_positions // self.block, key_positions // self.block
        same_block = query_blocks[:, None] == key_blocks[None, :]
        return (same_block & (query_blocks[:, None] % 2 == 0))[None, None]

    def candidate_ranges(self, context: AttentionContext, first: int, last: int) -> list[tuple[int, int]]:
        blocks = range(first // self.block, last // self.block + 1)
        return [(b * self.block, (b + 1) * self.block) for b in blocks if b % 2 == 0]


def leaf_qkv(q_len: int, k_len: int) -> list[torch.Tensor]:
    """Float64 query, key and value (4 query heads over 2 key/value heads) that need gradients."""
    return [tensor.requires_grad_() for tensor in qkv(q_len=q_len, k_len=k_len)]


def gradients(output: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of a fixed random projection of ``output`` with respect to ``inputs``."""
    projection = torch.randn(output.shape, generator=torch.Generator().manual_seed(1), dtype=output.dtype)
    return list(torch.autograd.grad((output * projection).sum(), inputs))


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("chunk_size", [2, 4])
def test_chunks_without_candidates_give_zero_rows(causal, chunk_size):
    """Whole chunks of queries whose rule names no key: zero rows and zero gradients, never an error."""
    rule = EvenBlocksRule(block=4)
    ctx = context(16, 16, causal=causal)
    query, key, value = inputs = leaf_qkv(16, 16)
    visible = rule.allowed(ctx, ctx.query_positions, ctx.key_positions)
    visible = visible & causal_padding_visible(ctx.query_positions, ctx.key_positions, causal, None)

    output = masked_attention(query, key, value, ctx, rule, chunk_size=chunk_size)
    expected = dense_attention(query, key, value, visible, ctx.scaling)

    odd_rows = (ctx.query_positions // 4) % 2 == 1
    assert torch.equal(output[:, :, odd_rows], torch.zeros_like(output[:, :, odd_rows]))
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-12)
    for actual, wanted in zip(gradients(output, inputs), gradients(expected, inputs), strict=True):
        torch.testing.assert_close(actual, wanted, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_no_keys_gives_zeros_and_zero_gradients(causal):
    """An empty key sequence: every row sees nothing, so the output and all gradients are zeros."""
    query, key, value = inputs = leaf_qkv(5, 0)
    output = masked_attention(query, key, value, context(5, 0, causal=causal))
    assert output.shape == query.shape
    assert torch.equal(output, torch.zeros_like(output))
    for gradient, tensor in zip(gradients(output, inputs), inputs, strict=True):
        assert torch.equal(gradient, torch.zeros_like(tensor))
