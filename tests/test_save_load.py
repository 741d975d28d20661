"""save_pretrained, then transformers' loaders (AutoModel*, the model class) or hf_efficient_attn.from_pretrained,
restore the patch and the variant's weights."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import hf_efficient_attn
from hf_efficient_attn import PatchError, patch_model
from hf_efficient_attn.api import CONFIG_RECORD, patched_variants

AUTO_CLASSES = {"llama": "AutoModelForCausalLM", "whisper": "AutoModelForSpeechSeq2Seq", "vit": "AutoModelForImageClassification"}


def test_round_trip_restores_patch(llama, tmp_path):
    model = patch_model(copy.deepcopy(llama), "sliding", window=5, sink_tokens=1, layers=[0, 2])
    ids = torch.randint(3, llama.config.vocab_size, (2, 20))
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    restored = hf_efficient_attn.from_pretrained(tmp_path)
    assert restored.config.efficient_attention == model.config.efficient_attention
    assert restored.config._attn_implementation == "hf_efficient_attn"
    assert torch.equal(restored(input_ids=ids).logits, expected)


def test_automodel_load_restores_patch_with_nothing_missing_or_unexpected(llama, tmp_path):
    model = patch_model(copy.deepcopy(llama), "sliding", window=5, sink_tokens=1, layers=[0, 2])
    ids = torch.randint(3, llama.config.vocab_size, (2, 20))
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert hf_efficient_attn.is_patched(loaded) and loaded.config.efficient_attention == model.config.efficient_attention
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(loaded(input_ids=ids).logits, expected)
    assert (loaded(input_ids=ids).logits - llama(input_ids=ids).logits).abs().max() > 1e-3  # not exact attention


def test_base_model_class_loads_the_patch_of_a_model_with_a_head(llama, tmp_path):
    """``AutoModel`` on a causal LM's checkpoint builds the bare decoder; the patch's layers are its layers."""
    model = patch_model(copy.deepcopy(llama), "sliding", window=5, layers=[1])
    ids = torch.randint(3, llama.config.vocab_size, (1, 16))
    expected = model.model(input_ids=ids).last_hidden_state
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is type(llama.model) and hf_efficient_attn.is_patched(loaded)
    assert torch.equal(loaded(input_ids=ids).last_hidden_state, expected)


def test_import_before_transformers_restores_the_patch(llama, tmp_path):
    """The hook waits for transformers' modeling module when the package is imported first."""
    model = patch_model(copy.deepcopy(llama), "linear")
    perturb_variant_parameters(model)
    ids = torch.randint(3, llama.config.vocab_size, (1, 10))
    torch.save({"ids": ids, "logits": model(input_ids=ids).logits.detach()}, tmp_path / "expected.pt")
    model.save_pretrained(tmp_path / "model")
    check = f"""
import sys, torch
import hf_efficient_attn
assert "transformers.modeling_utils" not in sys.modules
from transformers import AutoModelForCausalLM
expected = torch.load({str(tmp_path / "expected.pt")!r})
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r})
assert hf_efficient_attn.is_patched(model)
assert torch.equal(model(input_ids=expected["ids"]).logits, expected["logits"])
print("restored")
"""
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0 and "restored" in result.stdout, result.stderr[-2000:]


def test_a_record_this_installation_cannot_restore_fails_the_load_saying_what_to_do(llama, tmp_path):
    patch_model(copy.deepcopy(llama), "sliding", window=5).save_pretrained(tmp_path)
    config_file = Path(tmp_path) / "config.json"
    config = json.loads(config_file.read_text())
    config[CONFIG_RECORD]["variant"] = "no-such-variant"
    config_file.write_text(json.dumps(config))
    with pytest.raises(PatchError, match="cannot restore: Unknown variant 'no-such-variant'.*remove 'efficient_attention'"):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    del config[CONFIG_RECORD]
    config_file.write_text(json.dumps(config))
    assert not hf_efficient_attn.is_patched(transformers.AutoModelForCausalLM.from_pretrained(tmp_path))


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
@pytest.mark.parametrize("loader", ["auto", "ours"])
def test_round_trip_restores_learned_variant_weights(family, variant, options, loader, request, tmp_path):
    """Trained variant weights come back exactly, whatever names transformers gives the layers on save."""
    model = patch_model(copy.deepcopy(request.getfixturevalue(family)), variant, **options)
    inputs = request.getfixturevalue(f"{family}_inputs")
    weights = perturb_variant_parameters(model)
    expected = model(**inputs).logits
    model.save_pretrained(tmp_path)

    load = getattr(transformers, AUTO_CLASSES[family]).from_pretrained if loader == "auto" else hf_efficient_attn.from_pretrained
    restored = load(tmp_path)
    restored_weights = variant_state(restored)
    assert restored_weights.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(restored_weights[name], tensor), name
    assert torch.equal(restored(**inputs).logits, expected)


@pytest.mark.parametrize(
    ("variant", "options"),
    [("sliding", {"window": 2, "neighbourhood": "2d"}), ("lsh", {"num_buckets": 2, "bucket_size": 4}), ("axial", {}),
     ("performer", {"num_features": 16})],
    ids=["sliding-2d", "lsh", "axial", "performer"],
)
def test_round_trip_remakes_derived_buffers(variant, options, vit, vit_inputs, tmp_path):
    """Buffers a variant derives from its options (grid cells, rotations, orders) are not in the checkpoint,
    and transformers' loader leaves them uninitialised; the restored model computes the same."""
    model = patch_model(copy.deepcopy(vit), variant, **options).eval()
    expected = model(**vit_inputs).logits
    model.save_pretrained(tmp_path)
    restored = transformers.AutoModelForImageClassification.from_pretrained(tmp_path)
    assert torch.equal(restored(**vit_inputs).logits, expected)
    for original, loaded in zip(patched_variants(model), patched_variants(restored), strict=True):
        for (name, buffer), (_, loaded_buffer) in zip(original.named_buffers(), loaded.named_buffers(), strict=True):
            assert loaded_buffer.dtype == buffer.dtype and torch.equal(loaded_buffer, buffer), name


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


def test_load_report_lists_none_of_the_variants_weights(llama, tmp_path):
    """transformers reports checkpoint keys its model has no place for; the restored patch has them."""
    model = patch_model(copy.deepcopy(llama), "linear")
    weights = perturb_variant_parameters(model)
    model.save_pretrained(tmp_path)
    loaded = []
    report = load_report(lambda: loaded.append(transformers.AutoModelForCausalLM.from_pretrained(tmp_path)))
    assert "UNEXPECTED" not in report and "MISSING" not in report and "efficient_attn" not in report
    assert type(loaded[0]) is type(llama)
    assert all(torch.equal(variant_state(loaded[0])[name], tensor) for name, tensor in weights.items())
