"""The chunked masked engine against float64 softmax attention when chunks have no key to gather."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from hf_efficient_attn.context import AttentionContext
from hf_efficient_attn.masked import masked_attention

SCALING = 0.35


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

    def candidate_keys(
        self, context: AttentionContext, query_positions: torch.Tensor, key_positions: torch.Tensor
    ) -> torch.Tensor:
        query_blocks = query_positions // self.block
        return torch.isin(key_positions // self.block, query_blocks[query_blocks % 2 == 0])


def make_context(q_len: int, k_len: int, causal: bool) -> AttentionContext:
    """A context without padding; causal queries are the last ``q_len`` of ``k_len`` positions."""
    offset = max(k_len - q_len, 0) if causal else 0
    return AttentionContext(
        query_positions=torch.arange(offset, offset + q_len),
        key_positions=torch.arange(k_len),
        key_padding=None,
        sequence_start=None,
        query_documents=None,
        key_documents=None,
        dense_mask=None,
        causal=causal,
        scaling=SCALING,
        dropout=0.0,
        native_window=None,
    )


def leaf_qkv(q_len: int, k_len: int, q_heads: int = 4, kv_heads: int = 2, dim: int = 8) -> list[torch.Tensor]:
    """Float64 query ``[2, q_heads, q_len, dim]``, key and value ``[2, kv_heads, k_len, dim]`` needing grads."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(2, q_heads, q_len, dim), (2, kv_heads, k_len, dim), (2, kv_heads, k_len, dim)]
    return [torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_() for shape in shapes]


def reference_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """Dense float64 softmax attention; rows with no visible key give zeros and zero gradients."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = (query @ key.transpose(-1, -2) * SCALING).masked_fill(~visible, float("-inf"))
    any_visible = visible.any(-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(~any_visible, 0.0), dim=-1) * any_visible
    return weights @ value


def gradients(output: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of a fixed random projection of ``output`` with respect to ``inputs``."""
    projection = torch.randn(output.shape, generator=torch.Generator().manual_seed(1), dtype=output.dtype)
    return list(torch.autograd.grad((output * projection).sum(), inputs))


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("chunk_size", [2, 4])
def test_chunks_without_candidates_give_zero_rows(causal, chunk_size):
    """Whole chunks of queries whose rule names no key: zero rows and zero gradients, never an error."""
    rule = EvenBlocksRule(block=4)
    context = make_context(16, 16, causal)
    query, key, value = inputs = leaf_qkv(16, 16)
    visible = rule.allowed(context, context.query_positions, context.key_positions)
    if causal:
        visible = visible & (context.key_positions[None, :] <= context.query_positions[:, None])

    output = masked_attention(query, key, value, context, rule, chunk_size=chunk_size)
    expected = reference_attention(query, key, value, visible)

    odd_rows = (context.query_positions // 4) % 2 == 1
    assert torch.equal(output[:, :, odd_rows], torch.zeros_like(output[:, :, odd_rows]))
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-12)
    for actual, wanted in zip(gradients(output, inputs), gradients(expected, inputs), strict=True):
        torch.testing.assert_close(actual, wanted, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_no_keys_gives_zeros_and_zero_gradients(causal):
    """An empty key sequence: every row sees nothing, so the output and all gradients are zeros."""
    query, key, value = inputs = leaf_qkv(5, 0)
    output = masked_attention(query, key, value, make_context(5, 0, causal))
    assert output.shape == query.shape
    assert torch.equal(output, torch.zeros_like(output))
    for gradient, tensor in zip(gradients(output, inputs), inputs, strict=True):
        assert torch.equal(gradient, torch.zeros_like(tensor))
