"""Padding never changes real tokens' outputs, with our mask policy in place; masked rows are zeros."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_efficient_attn import patch_model

PATCHES = [
    pytest.param("full", {}, id="full"),
    pytest.param("sliding", {"window": 5}, id="sliding"),
    pytest.param("sliding", {"window": 5, "sink_tokens": 2}, id="sliding-sinks"),
]


def padded_batch(short: torch.Tensor, long: torch.Tensor, side: str, pad_id: int = 0):
    gap = long.shape[-1] - short.shape[-1]
    pad = torch.full((gap,), pad_id, dtype=short.dtype)
    padded = torch.cat([pad, short]) if side == "left" else torch.cat([short, pad])
    real = torch.ones(long.shape[-1], dtype=torch.long)
    if side == "left":
        real[:gap] = 0
    else:
        real[long.shape[-1] - gap :] = 0
    return torch.stack([long, padded]), torch.stack([torch.ones_like(real), real]), gap


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize(("variant", "options"), PATCHES)
def test_padding_does_not_leak(decoder, side, variant, options):
    generator = torch.Generator().manual_seed(5)
    long = torch.randint(3, decoder.config.vocab_size, (24,), generator=generator)
    short = torch.randint(3, decoder.config.vocab_size, (15,), generator=generator)
    model = patch_model(copy.deepcopy(decoder), variant, **options)
    ids, mask, gap = padded_batch(short, long, side)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    batched = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    alone = model(input_ids=short[None]).logits[0]
    real = batched[1, gap:] if side == "left" else batched[1, : short.shape[0]]
    assert (real - alone).abs().max().item() < 1e-5
    assert (batched[0] - model(input_ids=long[None]).logits[0]).abs().max().item() < 1e-5


def test_padding_is_honoured_not_dropped(llama):
    """If the mask policy were missing, transformers would pass attention_mask=None and padding would leak."""
    model = patch_model(copy.deepcopy(llama), "full")
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, llama.config.vocab_size, (1, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, 4] = 0
    with_hole = model(input_ids=ids, attention_mask=mask).logits
    without_hole = model(input_ids=ids).logits
    assert (with_hole[0, 5:] - without_hole[0, 5:]).abs().max().item() > 1e-4
    baseline = llama(input_ids=ids, attention_mask=mask).logits
    assert (with_hole[0, 5:] - baseline[0, 5:]).abs().max().item() < 1e-5


def test_fully_masked_rows_are_zero_not_nan(llama):
    """Left-padded query rows see no real key: their attention output is exactly zero."""
    model = patch_model(copy.deepcopy(llama), "sliding", window=3)
    seen = {}

    def grab(module, args, kwargs, output):
        seen["attention"] = output[0]

    model.model.layers[0].self_attn.register_forward_hook(grab, with_kwargs=True)
    ids = torch.randint(3, llama.config.vocab_size, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    logits = model(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(logits).all()
    attention = seen["attention"]  # after o_proj, whose bias is off: zero rows stay zero
    assert torch.equal(attention[1, :4], torch.zeros_like(attention[1, :4]))
    assert attention[1, 4:].abs().sum() > 0
