"""A patched model on a GPU backend (bf16) against the same weights on the chunked engine (float32)."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import tiny_llama

from hf_efficient_attn import patch_model


def gpu_llama() -> torch.nn.Module:
    """A tiny Llama with head size 64 and grouped heads, on the GPU."""
    return tiny_llama(head_dim=64, hidden_size=256, num_attention_heads=4, num_key_value_heads=2).cuda()


def assert_backend_matches_reference(variant: str, backend: str, ids: torch.Tensor, **options) -> None:
    """Loss, logits and the projections' gradients of ``variant`` on ``backend`` (bf16) equal the chunked
    engine's (float32) within bf16's rounding."""
    base = gpu_llama()
    reference = patch_model(copy.deepcopy(base), variant, backend="reference", **options)
    expected = reference(ids, labels=ids)
    expected.loss.backward()
    model = patch_model(copy.deepcopy(base).to(torch.bfloat16), variant, backend=backend, **options)
    got = model(ids, labels=ids)
    got.loss.backward()
    assert got.loss.float().item() == pytest.approx(expected.loss.item(), rel=2e-2)
    torch.testing.assert_close(got.logits.float(), expected.logits, atol=5e-2, rtol=5e-2)
    for (name, ours), (_, theirs) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        if theirs.grad is not None and "proj" in name:
            scale = theirs.grad.abs().max().clamp_min(1e-6)
            assert (ours.grad.float() - theirs.grad).abs().max() / scale < 0.1, name
