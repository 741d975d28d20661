"""save_pretrained then hf_efficient_attn.from_pretrained restores the patch and the variant's weights."""

from __future__ import annotations

import copy

import pytest
import torch

import hf_efficient_attn
from hf_efficient_attn import patch_model
from hf_efficient_attn.api import patched_variants


def test_round_trip_restores_patch(llama, tmp_path):
    model = patch_model(copy.deepcopy(llama), "sliding", window=5, sink_tokens=1, layers=[0, 2])
    ids = torch.randint(3, llama.config.vocab_size, (2, 20))
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    restored = hf_efficient_attn.from_pretrained(tmp_path)
    assert restored.config.efficient_attention == model.config.efficient_attention
    assert restored.config._attn_implementation == "hf_efficient_attn"
    assert torch.equal(restored(input_ids=ids).logits, expected)


def test_plain_transformers_load_gives_unpatched_model(llama, tmp_path):
    """Without our loader the checkpoint still loads, as the original model with exact attention."""
    model = patch_model(copy.deepcopy(llama), "sliding", window=5)
    model.save_pretrained(tmp_path)
    plain = type(llama).from_pretrained(tmp_path)
    ids = torch.randint(3, llama.config.vocab_size, (1, 12))
    assert not hf_efficient_attn.is_patched(plain)
    assert (plain(input_ids=ids).logits - llama(input_ids=ids).logits).abs().max().item() < 1e-5


def test_unpatched_checkpoint_loads_unpatched(vit, tmp_path):
    vit.save_pretrained(tmp_path)
    loaded = hf_efficient_attn.from_pretrained(tmp_path)
    assert not hf_efficient_attn.is_patched(loaded)


def test_whisper_round_trip(whisper, whisper_inputs, tmp_path):
    model = patch_model(copy.deepcopy(whisper), "sliding", window=3)
    expected = model(**whisper_inputs).logits
    model.save_pretrained(tmp_path)
    restored = hf_efficient_attn.from_pretrained(tmp_path)
    assert torch.equal(restored(**whisper_inputs).logits, expected)


def perturb_variant_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Move every variant parameter away from its initial value; return copies of the variant state."""
    generator = torch.Generator().manual_seed(7)
    parameters = [parameter for variant in patched_variants(model) for parameter in variant.parameters()]
    assert parameters, "the variant has no learned weights to restore"
    with torch.no_grad():
        for parameter in parameters:
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return variant_state(model)


def variant_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the state-dict entries of the variant modules, by name."""
    return {name: tensor.clone() for name, tensor in model.state_dict().items() if ".efficient_attn." in name}


@pytest.mark.parametrize(
    ("family", "variant", "options"),
    [
        ("vit", "lowrank", {"rank": 8}),
        ("whisper", "lowrank", {"rank": 8, "targets": "encoder"}),
        ("llama", "linear", {}),
    ],
    ids=["vit-lowrank", "whisper-encoder-lowrank", "llama-linear"],
)
def test_round_trip_restores_learned_variant_weights(family, variant, options, request, tmp_path):
    """Trained variant weights come back exactly, whatever names transformers gives the layers on save."""
    model = patch_model(copy.deepcopy(request.getfixturevalue(family)), variant, **options)
    inputs = request.getfixturevalue(f"{family}_inputs")
    weights = perturb_variant_parameters(model)
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)

    restored = hf_efficient_attn.from_pretrained(tmp_path)
    restored_weights = variant_state(restored)
    assert restored_weights.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(restored_weights[name], tensor), name
    assert torch.equal(restored(**inputs).logits, expected)


def load_report(load) -> str:
    """What transformers logs while ``load()`` runs (its loggers do not propagate to the root logger)."""
    import logging

    messages: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.WARNING)  # whatever an earlier test left
    logger.addHandler(handler)
    try:
        load()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return "\n".join(messages)


def test_our_loader_does_not_report_the_variants_weights_as_unexpected(llama, tmp_path):
    """transformers lists checkpoint keys its model has no place for; the variant's are ours to load."""
    model = patch_model(copy.deepcopy(llama), "linear")
    weights = perturb_variant_parameters(model)
    model.save_pretrained(tmp_path)
    plain = load_report(lambda: type(llama).from_pretrained(tmp_path))
    assert "efficient_attn" in plain and "UNEXPECTED" in plain  # the report this loader leaves out
    loaded = []
    ours = load_report(lambda: loaded.append(hf_efficient_attn.from_pretrained(tmp_path)))
    assert "UNEXPECTED" not in ours and "efficient_attn" not in ours and type(loaded[0]) is type(llama)
    assert all(torch.equal(variant_state(loaded[0])[name], tensor) for name, tensor in weights.items())
