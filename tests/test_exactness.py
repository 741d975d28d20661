"""Exact variants match the unpatched model to rounding, on outputs and on gradients (fp32)."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_efficient_attn import patch_model, unpatch_model

TOLERANCE = 1e-5


def token_ids(vocab: int, batch: int = 2, length: int = 40, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def outputs_and_grads(model, inputs):
    model.zero_grad()
    logits = model(**inputs).logits
    logits.float().sin().mean().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def assert_same(baseline, patched):
    base_logits, base_grads = baseline
    logits, grads = patched
    assert (logits - base_logits).abs().max().item() < TOLERANCE
    assert base_grads.keys() == grads.keys()
    worst = max((grads[n] - base_grads[n]).abs().max().item() for n in base_grads)
    assert worst < TOLERANCE, worst


EXACT_PATCHES = [
    pytest.param("full", {}, id="full"),
    pytest.param("sliding", {"window": 40}, id="sliding-window-equals-length"),
    pytest.param("sliding", {"window": 1000, "sink_tokens": 4}, id="sliding-window-above-length"),
]


@pytest.mark.parametrize(("variant", "options"), EXACT_PATCHES)
def test_decoders_exact(decoder, variant, options):
    inputs = {"input_ids": token_ids(decoder.config.vocab_size)}
    baseline = outputs_and_grads(decoder, inputs)
    patched = patch_model(copy.deepcopy(decoder), variant, **options)
    assert_same(baseline, outputs_and_grads(patched, inputs))


@pytest.mark.parametrize(("variant", "options"), EXACT_PATCHES)
def test_whisper_exact(whisper, whisper_inputs, variant, options):
    baseline = outputs_and_grads(whisper, whisper_inputs)
    patched = patch_model(copy.deepcopy(whisper), variant, **options)
    assert_same(baseline, outputs_and_grads(patched, whisper_inputs))


@pytest.mark.parametrize(("variant", "options"), [*EXACT_PATCHES, pytest.param("sliding", {"window": 6, "neighbourhood": "2d"}, id="2d-covering-grid")])
def test_vit_exact(vit, vit_inputs, variant, options):
    baseline = outputs_and_grads(vit, vit_inputs)
    patched = patch_model(copy.deepcopy(vit), variant, **options)
    assert_same(baseline, outputs_and_grads(patched, vit_inputs))


def test_whisper_cross_attention_exact_when_targeted(whisper, whisper_inputs):
    baseline = outputs_and_grads(whisper, whisper_inputs)
    patched = patch_model(copy.deepcopy(whisper), "full", targets=["encoder", "decoder", "cross"])
    assert_same(baseline, outputs_and_grads(patched, whisper_inputs))


def test_small_window_changes_outputs(decoder):
    """The control for the tests above: a window smaller than the sequence is not exact."""
    inputs = {"input_ids": token_ids(decoder.config.vocab_size)}
    baseline = decoder(**inputs).logits
    patched = patch_model(copy.deepcopy(decoder), "sliding", window=4)
    assert (patched(**inputs).logits - baseline).abs().max().item() > 1e-3


def test_mistral_native_window_is_kept():
    """A model with its own sliding window (Mistral) keeps it under our exact path."""
    from tiny_models import tiny_mistral

    model = tiny_mistral(sliding_window=8)
    inputs = {"input_ids": token_ids(model.config.vocab_size)}
    baseline = outputs_and_grads(model, inputs)
    assert_same(baseline, outputs_and_grads(patch_model(copy.deepcopy(model), "full"), inputs))


def test_packed_sequences_do_not_attend_across_documents(llama):
    """Position ids that restart mark packed documents; our path keeps them apart as sdpa does."""
    ids = token_ids(llama.config.vocab_size, batch=1, length=30)
    positions = torch.cat([torch.arange(12), torch.arange(18)]).unsqueeze(0)
    baseline = llama(input_ids=ids, position_ids=positions, use_cache=False).logits
    patched = patch_model(copy.deepcopy(llama), "full")
    packed = patched(input_ids=ids, position_ids=positions, use_cache=False).logits
    assert (packed - baseline).abs().max().item() < TOLERANCE
    second_alone = llama(input_ids=ids[:, 12:]).logits
    assert (packed[:, 12:] - second_alone).abs().max().item() < TOLERANCE


def test_partial_layers_keep_other_layers_exact(llama):
    """`layers=` patches only the chosen layers; unpatch_model restores the original outputs."""
    inputs = {"input_ids": token_ids(llama.config.vocab_size)}
    baseline = llama(**inputs).logits
    only_middle = patch_model(copy.deepcopy(llama), "sliding", window=4, layers=[1])
    attached = [name for name, _ in only_middle.named_modules() if name.endswith("efficient_attn")]
    assert attached == ["model.layers.1.self_attn.efficient_attn"]
    all_layers = patch_model(copy.deepcopy(llama), "sliding", window=4)
    middle_diff = (only_middle(**inputs).logits - baseline).abs().max().item()
    all_diff = (all_layers(**inputs).logits - baseline).abs().max().item()
    assert middle_diff > 0 and middle_diff != all_diff
    unpatch_model(only_middle)
    assert (only_middle(**inputs).logits - baseline).abs().max().item() < TOLERANCE
    assert only_middle.config._attn_implementation == llama.config._attn_implementation


def test_packed_documents_are_read_once_per_forward(llama, monkeypatch):
    """Every layer gets the same position ids: the host read that detects documents happens once per
    forward (not once per layer, where each would wait for the GPU), and a new forward reads again."""
    from hf_efficient_attn import context as context_module

    reads = []
    real = context_module.documents_from_position_ids
    monkeypatch.setattr(context_module, "documents_from_position_ids", lambda ids: reads.append(1) or real(ids))
    patched = patch_model(copy.deepcopy(llama), "full")
    ids = token_ids(llama.config.vocab_size, batch=1, length=30)
    packed = torch.cat([torch.arange(12), torch.arange(18)]).unsqueeze(0)
    for positions in (packed, torch.arange(30).unsqueeze(0)):
        before = len(reads)
        out = patched(input_ids=ids, position_ids=positions, use_cache=False).logits
        base = llama(input_ids=ids, position_ids=positions, use_cache=False).logits
        assert (out - base).abs().max().item() < TOLERANCE
        assert len(reads) - before == 1 < llama.config.num_hidden_layers
