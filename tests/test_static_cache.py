"""Every cache ``generate`` builds (static ones especially), compiled generation and assisted decoding.

Exact variants generate the unpatched model's tokens; approximate ones generate what recomputing every
step without a cache gives; `sliding` keeps a fixed-size sink+window layer whose memory does not grow.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from tiny_models import DECODERS, tiny_llama, tiny_mistral, tiny_whisper, whisper_features
from transformers import CompileConfig
from transformers.cache_utils import QuantizedCache

from hf_efficient_attn import cache as bounded_cache
from hf_efficient_attn import patch_model
from hf_efficient_attn.cache import SinkWindowCacheLayer, StaticSinkWindowLayer
from hf_efficient_attn.compat import output_cache

EXACT = {"flash": {}, "sliding": {"window": 100}, "sparse": {}}  # window and blocks cover every token
APPROXIMATE = {
    "sliding": {"window": 5},
    "sliding-sinks": {"window": 5, "sink_tokens": 2},
    "sparse": {"block_size": 4, "local_blocks": 2},
}


def left_padded_prompt(batch: int = 2, length: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 97, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    ids[1, :3] = 0
    return ids, mask


def generate(model, ids, mask, **kwargs):
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.generate(input_ids=ids, attention_mask=mask, **{**settings, **kwargs})


CPU_CACHES = ("dynamic", "static", "sliding_window", "hybrid")
"""The cache implementations ``generate`` builds on the CPU with transformers alone (the offloaded ones need
CUDA; the quantized one optimum-quanto or HQQ, or a release with its fp8 backend: `FP8_CACHE`)."""

FP8_CACHE = dict(cache_implementation="quantized", cache_config={"backend": "fp8"})


def has_fp8_cache() -> bool:
    try:
        QuantizedCache("fp8", tiny_llama().config)
    except ValueError:
        return False
    return True


needs_fp8_cache = pytest.mark.skipif(
    not has_fp8_cache(), reason="this transformers release quantizes caches only through optimum-quanto or HQQ"
)


@pytest.mark.parametrize("cache", CPU_CACHES)
@pytest.mark.parametrize("variant", sorted(EXACT))
@pytest.mark.parametrize("family", sorted(DECODERS))
def test_every_cache_implementation_generates_the_unpatched_tokens_for_exact_variants(family, variant, cache):
    base = DECODERS[family]()
    ids, mask = left_padded_prompt()
    expected = generate(base, ids, mask, cache_implementation=cache)
    patched = patch_model(copy.deepcopy(base), variant, **EXACT[variant])
    assert torch.equal(generate(patched, ids, mask, cache_implementation=cache), expected)


@pytest.mark.parametrize("cache", CPU_CACHES)
@pytest.mark.parametrize("name", sorted(APPROXIMATE))
def test_every_cache_implementation_generates_what_recomputation_does(name, cache):
    model = patch_model(tiny_llama(), name.split("-")[0], **APPROXIMATE[name])
    ids, mask = left_padded_prompt()
    assert torch.equal(generate(model, ids, mask, cache_implementation=cache), generate(model, ids, mask, use_cache=False))


@needs_fp8_cache
@pytest.mark.parametrize("variant", ["flash", "sparse"])
def test_a_quantized_cache_stays_quantized_under_variants_without_a_bounded_cache(variant):
    base = tiny_llama()
    ids, mask = left_padded_prompt()
    expected = generate(base, ids, mask, **FP8_CACHE)
    patched = patch_model(copy.deepcopy(base), variant, **EXACT[variant])
    out = generate(patched, ids, mask, **FP8_CACHE, return_dict_in_generate=True)
    assert torch.equal(out.sequences, expected)
    assert {type(layer).__name__ for layer in output_cache(out).layers} == {"Fp8QuantizedLayer"}


@needs_fp8_cache
@pytest.mark.parametrize("name", ["sliding", "sliding-sinks"])
def test_a_bounded_variant_replaces_quantized_layers_and_says_so_once(name, monkeypatch):
    model = patch_model(tiny_llama(), "sliding", **APPROXIMATE[name])
    ids, mask = left_padded_prompt()
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, return_dict_in_generate=True, **FP8_CACHE)
    monkeypatch.setattr(bounded_cache, "_REPLACED", set())
    with pytest.warns(UserWarning, match="Fp8QuantizedLayer layers with its sink\\+window layers") as caught:
        out = model.generate(input_ids=ids, attention_mask=mask, **settings)
        model.generate(input_ids=ids, attention_mask=mask, **settings)
    assert sum("Fp8QuantizedLayer" in str(warning.message) for warning in caught) == 1
    assert all(isinstance(layer, SinkWindowCacheLayer) for layer in output_cache(out).layers)
    assert torch.equal(out.sequences, generate(model, ids, mask, use_cache=False))


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("window", [11, 12, 20])
def test_left_padding_still_inside_the_window_when_decoding_starts_generates_what_recomputation_does(window, cache):
    """Three pad tokens that the window still covers once the cache is full: the bounded layer keeps its
    tokens in order until they have left the window (a ring would mix pad and real slots), then writes in
    place again."""
    model = patch_model(tiny_llama(), "sliding", window=window)
    ids, mask = left_padded_prompt()
    out = generate(model, ids, mask, cache_implementation=cache, max_new_tokens=30, return_dict_in_generate=True)
    assert torch.equal(out.sequences, generate(model, ids, mask, use_cache=False, max_new_tokens=30))
    if cache == "dynamic":
        assert output_cache(out).layers[0].ring_start is not None  # 3 pads + the window < 39 tokens


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("window", [4, 8, 100])
def test_a_window_wider_or_narrower_than_the_models_own_generates_what_recomputation_does(window, cache):
    """Mistral with its own window of 6: the bounded cache keeps the narrower of the two windows, and a
    static cache keeps transformers' own sliding layer."""
    model = patch_model(tiny_mistral(sliding_window=6), "sliding", window=window)
    assert model.model.layers[0].self_attn.efficient_attn.cache_window() == min(window, 6)
    ids, mask = left_padded_prompt()
    assert torch.equal(generate(model, ids, mask, cache_implementation=cache, max_new_tokens=20),
                       generate(model, ids, mask, use_cache=False, max_new_tokens=20))


@pytest.mark.parametrize("sinks", [0, 2])
def test_static_sliding_layer_has_a_fixed_size(sinks):
    window, leading_pad = 5, 3
    model = patch_model(tiny_llama(), "sliding", window=window, sink_tokens=sinks)
    ids, mask = left_padded_prompt()
    out = generate(model, ids, mask, cache_implementation="static", return_dict_in_generate=True, max_new_tokens=30)
    layers = output_cache(out).layers
    assert all(isinstance(layer, StaticSinkWindowLayer) for layer in layers)
    prefix = sinks + leading_pad if sinks else 0
    assert {layer.keys.shape[-2] for layer in layers} == {prefix + window}
    assert int(layers[0].get_seq_length()) == out.sequences.shape[-1] - 1


def test_whisper_static_generation():
    whisper = tiny_whisper()
    features = whisper_features(whisper)
    settings = dict(max_new_tokens=8, do_sample=False)
    expected = whisper.generate(input_features=features, cache_implementation="static", **settings)
    flash = patch_model(copy.deepcopy(whisper), "flash")
    assert torch.equal(flash.generate(input_features=features, cache_implementation="static", **settings), expected)
    sliding = patch_model(copy.deepcopy(whisper), "sliding", window=3)
    recomputed = sliding.generate(input_features=features, use_cache=False, **settings)
    assert torch.equal(sliding.generate(input_features=features, cache_implementation="static", **settings), recomputed)


def compile_everywhere() -> CompileConfig:
    """transformers compiles static-cache decoding on accelerators only; this asks for it on the CPU too."""
    config = CompileConfig(fullgraph=True)
    config._compile_all_devices = True
    return config


@pytest.mark.parametrize("name", ["flash", "sliding-sinks", "sparse"])
def test_compiled_static_generation_equals_eager(name):
    options = {"flash": {}, **APPROXIMATE}[name]
    model = patch_model(tiny_llama(), name.split("-")[0], **options)
    ids, mask = left_padded_prompt()
    eager = generate(model, ids, mask, cache_implementation="static")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = generate(model, ids, mask, cache_implementation="static", compile_config=compile_everywhere())
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "the decoding step was not compiled"
    assert torch.equal(compiled, eager)


def test_a_compile_after_another_cache_size_keeps_the_ring_buffers_static():
    """A process that compiled a decoding step over a static cache of one length, then compiles one over a
    sink+window ring of another, would trace the ring's buffer lengths as symbols (automatic dynamic
    shapes), which inductor's CUDA-graph partitions failed to bind on torch 2.11. Every graph input of
    the ring's size is traced with static sizes."""
    ids, mask = left_padded_prompt()
    base = tiny_llama()
    sliding = patch_model(copy.deepcopy(base), "sliding", **APPROXIMATE["sliding-sinks"])
    eager = generate(sliding, ids, mask, cache_implementation="static")
    graph_inputs: list[torch.Tensor] = []

    def recording_backend(graph, example_inputs):
        traced = (node.meta.get("example_value") for node in graph.graph.nodes if node.op == "placeholder")
        graph_inputs.extend(x for x in traced if isinstance(x, torch.Tensor))
        return graph.forward

    config = compile_everywhere()
    config.backend, config.mode = recording_backend, None
    torch._dynamo.reset()
    generate(patch_model(copy.deepcopy(base), "flash"), ids, mask, cache_implementation="static", compile_config=config)
    graph_inputs.clear()
    compiled = generate(sliding, ids, mask, cache_implementation="static", compile_config=config)
    assert torch.equal(compiled, eager)
    four_dim = [x for x in graph_inputs if x.dim() == 4]
    assert four_dim, "the decoding step was not compiled"
    assert all(isinstance(size, int) for x in four_dim for size in x.shape), [x.shape for x in four_dim]


@pytest.mark.parametrize("name", ["flash", "sliding-sinks", "sparse"])
def test_compiled_forward_generation_equals_eager(name):
    """``model.forward = torch.compile(model.forward, fullgraph=True)``, then generate with its growing cache."""
    options = {"flash": {}, **APPROXIMATE}[name]
    model = patch_model(tiny_llama(), name.split("-")[0], **options)
    ids, mask = left_padded_prompt()
    eager = generate(model, ids, mask)
    torch._dynamo.reset()
    model.forward = torch.compile(model.forward, fullgraph=True)
    assert torch.equal(generate(model, ids, mask), eager)


@pytest.mark.parametrize("window", [100000, 6])
def test_assisted_decoding_crops_the_bounded_cache(window):
    """The assistant's rejected drafts are cropped from the cache: while nothing was dropped (a window
    wider than the text) and after the window moved on (the last step's dropped tokens are kept)."""
    model = patch_model(tiny_llama(), "sliding", window=window)
    assistant = tiny_llama(seed=5)
    ids = torch.randint(3, 97, (1, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    plain = generate(model, ids, mask, max_new_tokens=20)
    assisted = generate(model, ids, mask, max_new_tokens=20, assistant_model=assistant)
    assert torch.equal(assisted, plain)


def test_rollback_beyond_the_last_step_says_what_to_do():
    layer = SinkWindowCacheLayer(window=3, prefix=1)
    states = torch.randn(1, 1, 10, 4)
    layer.update(states, states)
    new = torch.randn(1, 1, 2, 4)
    keys, _ = layer.update(new, new)
    assert torch.equal(keys, torch.cat([states[..., :1, :], states[..., -2:, :], new], dim=-2))
    layer.crop(-1)  # one of the last step's tokens: rolled back
    assert layer.get_seq_length() == 11
    keys, _ = layer.update(new[..., :1, :], new[..., :1, :])  # written in place: the window's order may differ
    expected = torch.cat([states[..., :1, :], states[..., -1:, :], new[..., :1, :], new[..., :1, :]], -2)
    assert torch.equal(keys[..., :1, :], expected[..., :1, :])
    assert torch.equal(in_position_order(keys[..., 1:, :]), in_position_order(expected[..., 1:, :]))
    with pytest.raises(RuntimeError, match="can roll back only"):
        layer.crop(-2)


def in_position_order(keys: torch.Tensor) -> torch.Tensor:
    """Keys whose first feature is their position (or a random value), sorted by it."""
    return keys.gather(-2, keys[..., :1].argsort(dim=-2).expand_as(keys))


@pytest.mark.parametrize("prefix", [0, 2])
def test_decoding_steps_on_a_full_window_write_in_place_and_return_exactly_the_visible_keys(prefix):
    """One-token steps once the window is full overwrite the oldest window token in the held buffer (no
    new tensor): the prefix stays in place and the window holds exactly the last ``window`` tokens; a
    step of several tokens, and a roll-back, find them in order again."""
    window, prompt = 5, 9
    tokens = torch.arange(40, dtype=torch.float64).reshape(1, 1, 40, 1).expand(2, 3, 40, 4)  # key = position
    layer = SinkWindowCacheLayer(window=window, prefix=prefix)
    layer.update(tokens[..., :prompt, :], tokens[..., :prompt, :])
    buffer = None
    for position in range(prompt, 30):
        keys, values = layer.update(tokens[..., position : position + 1, :], tokens[..., position : position + 1, :])
        assert torch.equal(keys, values)
        assert keys[0, 0, :prefix, 0].tolist() == list(range(prefix))
        assert sorted(keys[0, 0, prefix:, 0].tolist()) == list(range(position - window + 1, position + 1))
        if position > prompt:  # from the second step: the buffer of the first, written in place
            assert buffer is None or keys.data_ptr() == buffer
            buffer = keys.data_ptr()
    keys, _ = layer.update(tokens[..., 30:33, :], tokens[..., 30:33, :])
    assert keys[0, 0, :, 0].tolist() == list(range(prefix)) + list(range(30 - window + 1, 33))
    layer.update(tokens[..., 33:34, :], tokens[..., 33:34, :])
    layer.update(tokens[..., 34:35, :], tokens[..., 34:35, :])
    layer.crop(-1)
    assert layer.keys[0, 0, :, 0].tolist() == list(range(prefix)) + list(range(34 - window + 1, 34))


@pytest.mark.parametrize("prompt", [1, 7])
@pytest.mark.parametrize("sinks", [0, 2])
def test_static_sliding_layer_returns_exactly_the_keys_each_query_sees(sinks, prompt):
    """Driven as generation drives it (a prompt, single steps, a step of several tokens, single steps
    again): the keys a query may see, by the positions the context derives for the layer's slots, are the
    sinks and the window before it, each once, holding that token's key."""
    from hf_efficient_attn.context import build_context
    from hf_efficient_attn.layout import make_layout

    window, total = 4, 40
    tokens = torch.arange(total, dtype=torch.float64).reshape(1, 1, total, 1).expand(1, 1, total, 2)  # key = position
    layer = StaticSinkWindowLayer(max_cache_len=total, window=window, prefix=sinks)
    seen = 0
    for step in [prompt, 1, 1, 1, 1, 1, 3, 1, 1, 5, 1, 1, 6, 1]:
        new = tokens[..., seen : seen + step, :]
        keys, _ = layer.update(new, new)
        query = torch.zeros(1, 1, step, 2, dtype=torch.float64)
        layout = make_layout(tokens=total, padding=None, query_start=torch.tensor(seen), query_length=step)
        context = build_context(query=query, key=keys, attention_mask=layout, causal=True, scaling=1.0, dropout=0.0,
                                cache_window=window, position_ids=None, native_window=None)
        valid = torch.ones(keys.shape[-2], dtype=torch.bool) if context.key_padding is None else context.key_padding[0]
        for position in context.query_positions.tolist():
            sees = valid & (context.key_positions <= position) & (
                (position - context.key_positions < window) | (context.key_positions < sinks))
            expected = sorted(set(range(max(0, position - window + 1), position + 1)) | set(range(min(sinks, position + 1))))
            assert sorted(context.key_positions[sees].tolist()) == expected, (step, position)
            assert torch.equal(keys[0, 0, sees, 0], context.key_positions[sees].double())  # each slot holds its token
        seen += step
    assert layer.keys.shape[-2] == sinks + window


def test_once_the_prompt_fills_the_sinks_steps_write_only_their_ring_slot(monkeypatch):
    """The prefix is written while it has empty slots (a host fact from the updates' lengths) and then
    left alone; a reset empties it again."""
    layer = StaticSinkWindowLayer(max_cache_len=40, window=4, prefix=3)
    states = torch.randn(1, 1, 2, 2)
    layer.update(states, states)  # a 2-token prompt: one sink slot still empty
    assert not layer.prefix_filled
    layer.update(states[..., :1, :], states[..., :1, :])
    assert layer.prefix_filled and torch.equal(layer.keys[0, 0, 2], states[0, 0, 0])
    prefix_writes = []
    original_where = torch.where
    monkeypatch.setattr(torch, "where", lambda *args: prefix_writes.append(1) or original_where(*args))
    layer.update(states[..., :1, :], states[..., :1, :])
    assert not prefix_writes
    layer.reset()
    assert not layer.prefix_filled and layer.tokens_before_filled == 0


def test_a_compiled_static_step_over_sinks_and_window_is_plain_attention(chosen_routes):
    """Under torch.compile whether a row is left-padded stays on the device; a step whose slots are the
    sinks and the window is still routed as plain attention (SDPA), as in eager mode, and exact."""
    model = patch_model(tiny_llama(), "sliding", window=5, sink_tokens=2)
    ids = torch.randint(3, 97, (1, 9), generator=torch.Generator().manual_seed(3))
    expected = generate(model, ids, torch.ones_like(ids), use_cache=False, max_new_tokens=6)
    chosen_routes.clear()
    config = CompileConfig(fullgraph=True, backend="eager")
    config._compile_all_devices = True
    torch._dynamo.reset()
    got = generate(model, ids, torch.ones_like(ids), cache_implementation="static", compile_config=config,
                   max_new_tokens=6)
    assert torch.equal(got, expected)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    # the prompt (eager: its first layer plans the call, the others replay it) has 9 tokens, more than the
    # sinks and the window cover; then the compiled steps, traced layer by layer
    assert chosen_routes[0] == "chunked"
    assert len(chosen_routes) > model.config.num_hidden_layers and set(chosen_routes[1:]) == {"sdpa"}
