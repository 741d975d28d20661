"""Half-precision runs, and the compact layout our mask policy hands to attention (never N×N)."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_efficient_attn import patch_model
from hf_efficient_attn.layout import is_layout, read_layout


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("variant", "options"), [("full", {}), ("sliding", {"window": 64})])
def test_half_precision_matches_unpatched(llama, dtype, variant, options):
    model = llama.to(dtype)
    ids = torch.randint(3, llama.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(0))
    baseline = model(input_ids=ids).logits.float()
    patched = patch_model(copy.deepcopy(model), variant, **options)
    logits = patched(input_ids=ids).logits
    assert logits.dtype == dtype
    scale = baseline.abs().max().item()
    assert (logits.float() - baseline).abs().max().item() < 0.02 * scale


def test_attention_receives_compact_layout(llama):
    """What reaches the attention function is the padding over the tokens seen, not an N×N mask."""
    model = patch_model(copy.deepcopy(llama), "sliding", window=4)
    received = []

    def grab(module, args, kwargs):
        received.append(kwargs["attention_mask"])

    model.model.layers[0].self_attn.register_forward_pre_hook(grab, with_kwargs=True)
    ids = torch.randint(3, llama.config.vocab_size, (2, 64))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    model(input_ids=ids, attention_mask=mask)
    assert is_layout(received[-1]) and received[-1].numel() == 2 * 64
    layout = read_layout(received[-1])
    assert layout.tokens == 64 and not layout.static
    assert torch.equal(layout.padding, mask.bool())
    model(input_ids=ids)
    assert received[-1].numel() == 0 and read_layout(received[-1]).padding is None and read_layout(received[-1]).tokens == 64


@pytest.mark.parametrize("use_cache", [False, True])
def test_autocast_runs_attention_in_the_autocast_dtype(llama, use_cache):
    """Under autocast the variant gets bfloat16 queries, keys and values, as SDPA does in the unpatched
    model (rotary embeddings leave queries and keys in float32, the value projection gives bfloat16),
    and the logits stay as close to the unpatched model's under the same autocast as rounding allows."""
    ids = torch.randint(3, llama.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        baseline = llama(input_ids=ids, use_cache=use_cache).logits.float()
    patched = patch_model(copy.deepcopy(llama), "sliding", window=64)
    received = []
    patched.model.layers[0].self_attn.efficient_attn.register_forward_pre_hook(
        lambda module, args: received.append([t.dtype for t in args[:3]])
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = patched(input_ids=ids, use_cache=use_cache).logits.float()
    assert received == [[torch.bfloat16] * 3]
    scale = baseline.abs().max().item()
    assert (logits - baseline).abs().max().item() < 0.02 * scale
    patched(input_ids=ids, use_cache=use_cache)
    assert received[-1] == [torch.float32] * 3
