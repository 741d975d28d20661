"""The Llama-like decoder families beyond Llama, Mistral and Qwen2: exact variants give the unpatched
model's logits and tokens (dynamic and static caches), approximate ones what recomputation gives, the
forward compiles without a graph break, and a soft-capped attention is refused with the model unchanged.

Each family has something of its own in or around attention: query/key norms (Qwen3, OLMo 2, Cohere),
a scaling other than head_dim ** -0.5 (Granite, Gemma 3), per-layer sliding windows (Gemma 3, whose
sliding layers alternate with full ones), layers without RoPE (SmolLM3), biases (StarCoder2), a fused
QKV projection (Phi-3).
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from test_compile import graph_breaks
from test_static_cache import EXACT, generate, left_padded_prompt
from tiny_models import DECODER_SHAPE
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from hf_efficient_attn import UnsupportedModelError, patch_model
from hf_efficient_attn.patches.llama import native_window

SHAPE = {**DECODER_SHAPE, "head_dim": 8, "pad_token_id": 0}
FAMILIES = {
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"sliding_window": 6, "query_pre_attn_scalar": 12}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"attention_multiplier": 0.2}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", {}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {"use_qk_norm": True}),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", {}),
}


def tiny(family: str, **overrides) -> torch.nn.Module:
    config_name, model_name, extra = FAMILIES[family]
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(**{**SHAPE, **extra, **overrides})
    config._attn_implementation = "sdpa"
    return getattr(transformers, model_name)(config).eval()


def caches_for(family: str, sinks: int = 0) -> tuple[str, ...]:
    """The caches to generate with: on Gemma 3's sliding layers a static cache keeps the model's own window
    in an order sink tokens cannot be placed in (`test_a_static_cache_over_the_models_own_window...`)."""
    return ("dynamic",) if family == "gemma3" and sinks else ("dynamic", "static")


@pytest.mark.parametrize("variant", sorted(EXACT))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_exact_variants_give_the_unpatched_logits_and_tokens(family, variant):
    base = tiny(family)
    ids, mask = left_padded_prompt(length=14)
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=mask).logits
        patched = patch_model(copy.deepcopy(base), variant, **EXACT[variant])
        logits = patched(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(logits[real], expected[real], rtol=1e-5, atol=1e-5)
    for cache in caches_for(family):
        assert torch.equal(generate(patched, ids, mask, cache_implementation=cache),
                           generate(base, ids, mask, cache_implementation=cache)), cache


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_narrow_window_with_sinks_generates_what_recomputation_does(family):
    model = patch_model(tiny(family), "sliding", window=4, sink_tokens=2)
    ids, mask = left_padded_prompt(length=14)
    with torch.no_grad():  # the window does change what the model computes
        assert not torch.allclose(model(input_ids=ids).logits, tiny(family)(input_ids=ids).logits, atol=1e-3)
    recomputed = generate(model, ids, mask, use_cache=False)
    for cache in caches_for(family, sinks=2):
        assert torch.equal(generate(model, ids, mask, cache_implementation=cache), recomputed), cache


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_the_patched_forward_compiles_without_a_graph_break(family):
    model = patch_model(tiny(family), "sliding", window=4)
    ids, mask = left_padded_prompt(length=14)
    assert graph_breaks(lambda: model(input_ids=ids, attention_mask=mask, use_cache=False)) == 0


@pytest.mark.parametrize("window", [4, 100])
def test_a_static_cache_over_the_models_own_window_keeps_it_and_refuses_sinks_there(window):
    """Gemma 3's static sliding layers keep the model's window of 6, every key a window of 4 or 100 can
    see there: generation equals recomputation. Sink tokens, which that layer cannot place, are refused
    with what to do."""
    ids, mask = left_padded_prompt(length=14)
    model = patch_model(tiny("gemma3"), "sliding", window=window)
    recomputed = generate(model, ids, mask, use_cache=False, max_new_tokens=20)
    for cache in ("static", "dynamic"):
        assert torch.equal(generate(model, ids, mask, cache_implementation=cache, max_new_tokens=20), recomputed), cache
    with_sinks = patch_model(tiny("gemma3"), "sliding", window=window, sink_tokens=2)
    with pytest.raises(ValueError, match="default dynamic cache on this model, or patch with sink_tokens=0"):
        generate(with_sinks, ids, mask, cache_implementation="static")


def test_a_soft_capped_attention_is_refused_and_the_model_left_unchanged():
    model = tiny("gemma3", attn_logit_softcapping=50.0)
    with pytest.raises(UnsupportedModelError, match="attn_logit_softcapping=None"):
        patch_model(model, "flash")
    assert model.config._attn_implementation == "sdpa"
    assert not any(hasattr(module, "efficient_attn") for module in model.modules())


WINDOWED = {
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 6}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"use_sliding_window": True, "sliding_window": 6, "max_window_layers": 1}),
    "gemma3": FAMILIES["gemma3"],
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"sliding_window": 6}),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", {"sliding_window": 6}),
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
}


@pytest.mark.parametrize("family", sorted(WINDOWED))
def test_the_adapters_window_is_the_one_transformers_passes_each_layer(family):
    """The bounded cache is sized from the window the adapter records per layer (`LayerInfo.native_window`,
    read when the model is patched); attention masks by the ``sliding_window`` transformers passes each
    call. A spy attention function records what each layer is passed: the two agree on every layer, window
    or none (Qwen2/3 and Gemma 3 mix windowed and full layers)."""
    config_name, model_name, extra = WINDOWED[family]
    passed: dict[int, int | None] = {}

    def spy(module, query, key, value, attention_mask, **kwargs):
        passed[module.layer_idx] = kwargs.get("sliding_window")
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("window-spy", spy)
    config = getattr(transformers, config_name)(**{**SHAPE, **extra})
    config._attn_implementation = "window-spy"
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        model(input_ids=torch.arange(1, 11)[None])
    recorded = {layer.self_attn.layer_idx: native_window(layer.self_attn, config) for layer in model.model.layers}
    assert passed == recorded
    assert (set(passed.values()) != {None}) == (family != "llama")
