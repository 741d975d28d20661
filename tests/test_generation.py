"""Generation with the KV cache equals recomputation without it; the sliding cache stays bounded."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_efficient_attn import patch_model, unpatch_model
from hf_efficient_attn.cache import SinkWindowCacheLayer
from hf_efficient_attn.compat import model_cache_keyword, output_cache

PATCHES = [
    pytest.param("full", {}, id="full"),
    pytest.param("sliding", {"window": 6}, id="sliding"),
    pytest.param("sliding", {"window": 6, "sink_tokens": 3}, id="sliding-sinks"),
]


def greedy(model, ids, mask, steps, use_cache):
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=steps,
        do_sample=False,
        use_cache=use_cache,
        pad_token_id=0,
    )


@pytest.mark.parametrize(("variant", "options"), PATCHES)
def test_cached_generation_equals_recomputation(decoder, variant, options):
    model = patch_model(copy.deepcopy(decoder), variant, **options)
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(3, decoder.config.vocab_size, (2, 11), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding, as generate() expects
    ids[1, :3] = 0
    cached = greedy(model, ids, mask, 25, use_cache=True)
    recomputed = greedy(model, ids, mask, 25, use_cache=False)
    assert torch.equal(cached, recomputed)


def test_cached_logits_match_full_forward(llama):
    """Step-by-step decoding logits equal one forward over the whole sequence (window + sinks)."""
    model = patch_model(copy.deepcopy(llama), "sliding", window=5, sink_tokens=2)
    ids = torch.randint(3, llama.config.vocab_size, (1, 30), generator=torch.Generator().manual_seed(2))
    full = model(input_ids=ids).logits
    out = model(input_ids=ids[:, :12], use_cache=True)
    cache, steps = output_cache(out), [out.logits]
    for position in range(12, 30):
        out = model(input_ids=ids[:, position : position + 1], **{model_cache_keyword(model): cache}, use_cache=True)
        steps.append(out.logits)
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-5


def test_sliding_cache_stops_growing(llama):
    window, sinks = 6, 2
    model = patch_model(copy.deepcopy(llama), "sliding", window=window, sink_tokens=sinks)
    ids = torch.randint(3, llama.config.vocab_size, (1, 8))
    out = model.generate(input_ids=ids, max_new_tokens=40, do_sample=False, return_dict_in_generate=True, pad_token_id=0)
    cache = output_cache(out)
    assert all(isinstance(layer, SinkWindowCacheLayer) for layer in cache.layers)
    # the kept tokens, and the last step's token (held for a rollback until the next step trims it)
    assert {layer.keys.shape[-2] for layer in cache.layers} == {sinks + window - 1 + 1}
    assert cache.get_seq_length() == out.sequences.shape[-1] - 1


def test_partially_patched_model_keeps_full_cache_elsewhere(llama):
    model = patch_model(copy.deepcopy(llama), "sliding", window=4, layers=[0])
    ids = torch.randint(3, llama.config.vocab_size, (1, 10))
    out = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, return_dict_in_generate=True, pad_token_id=0)
    lengths = [layer.keys.shape[-2] for layer in output_cache(out).layers]
    assert lengths[0] == 3 + 1 and lengths[1:] == [out.sequences.shape[-1] - 1] * 2
    assert torch.equal(out.sequences, greedy(model, ids, torch.ones_like(ids), 12, use_cache=False))


def test_one_hook_on_the_first_bounded_layer_bounds_every_patched_layer(llama):
    """The cache hook sits on the first patched module only (the others keep the fast call path) and still
    bounds every patched layer; unpatching removes it."""
    model = patch_model(copy.deepcopy(llama), "sliding", window=4, layers=[1, 2])
    hooked = [name for name, module in model.named_modules() if module._forward_pre_hooks]
    assert hooked == ["model.layers.1.self_attn"]
    ids = torch.randint(3, llama.config.vocab_size, (1, 10))
    out = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, return_dict_in_generate=True, pad_token_id=0)
    lengths = [layer.keys.shape[-2] for layer in output_cache(out).layers]
    assert lengths == [out.sequences.shape[-1] - 1, 3 + 1, 3 + 1]
    assert torch.equal(out.sequences, greedy(model, ids, torch.ones_like(ids), 12, use_cache=False))
    unpatch_model(model)
    assert not any(module._forward_pre_hooks for module in model.modules())


def test_whisper_generation_with_windowed_decoder(whisper, whisper_inputs):
    model = patch_model(copy.deepcopy(whisper), "sliding", window=4)
    features = whisper_inputs["input_features"]
    kwargs = dict(max_new_tokens=10, do_sample=False)
    cached = model.generate(input_features=features, use_cache=True, **kwargs)
    recomputed = model.generate(input_features=features, use_cache=False, **kwargs)
    assert torch.equal(cached, recomputed)
