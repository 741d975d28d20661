"""A forward's planned calls: planned in its first layer, run again by the others (`replay`), never
across forwards that have a mask (calls without one, Whisper's encoder's, keep theirs), calls of other shapes
or variants with other options, and never past a hook.

Every comparison is against the same model with plans not shared (each layer plans its own call) or
against the unpatched model; the counts come from wrapping `dispatch.choose`.
"""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from tiny_models import tiny_llama, tiny_qwen2, tiny_whisper, whisper_features

from hf_efficient_attn import interface, patch_model
from hf_efficient_attn.layout import make_layout
from hf_efficient_attn.replay import ReplayMemo

VARIANTS = {
    "flash": {},
    "sliding": {"window": 4, "sink_tokens": 1},
    "sparse": {"block_size": 4, "local_blocks": 1, "global_blocks": 1, "random_blocks": 1},
}


def _no_sharing(monkeypatch):
    monkeypatch.setattr(interface, "_replay_key", lambda *args: None)


def _left_padded_batch():
    ids = torch.randint(3, 97, (2, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids, mask


def _generate(model, ids, mask):
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, min_new_tokens=6,
                              do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)


def test_one_plan_per_forward_and_the_tokens_of_planning_every_layer(chosen_routes, monkeypatch):
    model = patch_model(tiny_llama(num_hidden_layers=4), "flash")
    ids = torch.randint(3, 97, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(ids)
    assert len(chosen_routes) == 1  # four layers, one plan


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_replayed_generation_equals_planning_every_layer(variant, chosen_routes, monkeypatch):
    """Left-padded batch, a prompt and decoding steps: the same tokens and scores as when each layer plans
    its own call, with one plan per forward instead of one per layer."""
    base = tiny_llama(num_hidden_layers=4)
    ids, mask = _left_padded_batch()
    replayed = _generate(patch_model(copy.deepcopy(base), variant, **VARIANTS[variant]), ids, mask)
    planned_once = len(chosen_routes)
    chosen_routes.clear()
    with monkeypatch.context() as patch:
        _no_sharing(patch)
        expected = _generate(patch_model(copy.deepcopy(base), variant, **VARIANTS[variant]), ids, mask)
    assert torch.equal(replayed.sequences, expected.sequences)
    for got, want in zip(replayed.scores, expected.scores, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert planned_once == 6  # the prompt and five steps
    assert len(chosen_routes) == 6 * 4


def test_exact_replay_matches_the_unpatched_model():
    base = tiny_llama(num_hidden_layers=4)
    ids, mask = _left_padded_batch()
    expected = _generate(base, ids, mask)
    got = _generate(patch_model(copy.deepcopy(base), "flash"), ids, mask)
    assert torch.equal(got.sequences, expected.sequences)
    for step_got, step_want in zip(got.scores, expected.scores, strict=True):
        torch.testing.assert_close(step_got, step_want, rtol=1e-5, atol=1e-5)


def test_layers_left_unpatched_plan_apart_from_patched_ones(chosen_routes, monkeypatch):
    """Layers 0-1 slide over 3 keys, layers 2-3 run exact attention: two plans per forward, and the
    logits of planning every layer."""
    base = tiny_llama(num_hidden_layers=4)
    ids = torch.randint(3, 97, (1, 12), generator=torch.Generator().manual_seed(2))
    model = patch_model(copy.deepcopy(base), "sliding", window=3, layers=[0, 1])
    with torch.no_grad():
        got = model(ids).logits
        assert len(chosen_routes) == 2
        with monkeypatch.context() as patch:
            _no_sharing(patch)
            expected = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_a_model_mixing_full_and_sliding_layers_keeps_a_plan_per_layout(chosen_routes):
    """Qwen2 with alternating full and sliding-window layers hands its layers two layouts per forward:
    one plan for each, and the unpatched model's logits."""
    base = tiny_qwen2(num_hidden_layers=4, use_sliding_window=True, sliding_window=4, max_window_layers=0,
                      layer_types=["full_attention", "sliding_attention"] * 2)
    ids = torch.randint(3, 97, (1, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = base(ids).logits
        got = patch_model(copy.deepcopy(base), "flash")(ids).logits
    assert chosen_routes == ["sdpa", "chunked"]  # full layers: plain causal; sliding layers: the model's window
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_calls_that_differ_in_what_a_plan_reads_get_their_own_plans():
    variant = patch_model(tiny_llama(), "flash").model.layers[0].self_attn.efficient_attn
    query, key = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 6, 8)

    def replay_key(query=query, key=key, value=key, causal=True, scaling=0.5, dropout=0.0, positions=None,
                   window=None):
        return interface._replay_key(variant, query, key, value, causal, scaling, dropout, positions, window)

    first = replay_key()
    assert replay_key() == first
    others = [
        replay_key(key=torch.randn(1, 2, 7, 8), value=torch.randn(1, 2, 7, 8)),
        replay_key(query=torch.randn(1, 4, 2, 8)),
        replay_key(query=query.double(), key=key.double(), value=key.double()),
        replay_key(causal=False),
        replay_key(scaling=0.25),
        replay_key(dropout=0.1),
        replay_key(positions=torch.arange(6)[None]),
        replay_key(window=4),
        replay_key(query=query.clone().requires_grad_()),
    ]
    assert first not in others and len(set(others)) == len(others)
    variant.train()
    assert replay_key() != first
    other_options = patch_model(tiny_llama(), "sliding", window=4).model.layers[0].self_attn.efficient_attn
    assert interface._replay_key(other_options, query, key, key, True, 0.5, 0.0, None, None) != first


def test_a_hook_on_a_variant_module_sees_every_call():
    model = patch_model(tiny_llama(num_hidden_layers=4), "flash")
    seen = []
    for layer in model.model.layers:
        layer.self_attn.efficient_attn.register_forward_hook(lambda module, args, output: seen.append(module))
    with torch.no_grad():
        model(torch.randint(3, 97, (1, 9)))
    assert len(seen) == 4


def test_training_gradients_equal_planning_every_layer(monkeypatch):
    base = tiny_llama(num_hidden_layers=4)
    ids, mask = _left_padded_batch()

    def gradients(model):
        model.train()
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
        return {name: p.grad for name, p in model.named_parameters()}

    got = gradients(patch_model(copy.deepcopy(base), "sliding", window=4))
    with monkeypatch.context() as patch:
        _no_sharing(patch)
        expected = gradients(patch_model(copy.deepcopy(base), "sliding", window=4))
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=0, atol=0, msg=name)


def test_the_memo_keeps_plans_per_layout_and_forgets_them_with_it():
    memo = ReplayMemo(max_layouts=2)
    first, second, third = (make_layout(tokens=4, padding=None) for _ in range(3))
    plan = lambda q, k, v: q  # noqa: E731
    memo.put(first, "call", 4, plan)
    assert memo.get(first, "call") == (4, plan)
    assert memo.get(first, "another call") is None
    assert memo.get(second, "call") is None and memo.get(None, "call") is None  # another forward, no layout
    memo.put(second, "call", 3, plan)  # a second layout of the same forward (full and sliding layers)
    assert memo.get(first, "call") == (4, plan) and memo.get(second, "call") == (3, plan)
    memo.put(third, "call", 2, plan)  # a third: the oldest goes
    assert memo.get(first, "call") is None and memo.get(third, "call") == (2, plan)
    del second, third
    gc.collect()
    assert len(memo) == 0


def test_the_memo_keeps_plans_of_calls_without_a_mask_across_forwards_up_to_its_bound():
    memo = ReplayMemo(max_unmasked=2)
    plan = lambda q, k, v: q  # noqa: E731
    memo.put(None, "call", 4, plan)
    assert memo.get(None, "call") == (4, plan) and memo.get(None, "another call") is None
    memo.put(None, "second", 4, plan)
    memo.put(None, "third", 4, plan)  # past the bound: the oldest goes
    assert memo.get(None, "call") is None and memo.get(None, "third") == (4, plan) and len(memo) == 2


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_an_encoder_without_a_mask_replays_its_plan_in_the_next_forward(variant, chosen_routes, monkeypatch):
    """Whisper's encoder passes no mask: its first forward plans once for every layer, a second batch of
    the same shape plans nothing, one of another shape plans again; outputs equal planning every layer."""
    base = tiny_whisper()
    options = {"window": 6} if variant == "sliding" else VARIANTS[variant]
    batches = [whisper_features(base, batch=2, seed=1), whisper_features(base, batch=2, seed=2),
               whisper_features(base, batch=3, seed=3)]
    encoder = patch_model(copy.deepcopy(base), variant, **options).model.encoder
    with torch.no_grad():
        outputs = [encoder(features).last_hidden_state for features in batches[:1]]
        planned = len(chosen_routes)
        outputs.append(encoder(batches[1]).last_hidden_state)
        replayed = len(chosen_routes)
        outputs.append(encoder(batches[2]).last_hidden_state)
    assert planned == 1 and replayed == 1 and len(chosen_routes) == 2
    with monkeypatch.context() as patch:
        _no_sharing(patch)
        expected = patch_model(copy.deepcopy(base), variant, **options).model.encoder
        with torch.no_grad():
            for got, features in zip(outputs, batches, strict=True):
                torch.testing.assert_close(got, expected(features).last_hidden_state, rtol=0, atol=0)
