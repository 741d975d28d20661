"""A LoRA recipe's output is a plain PEFT adapter: ``PeftModel.from_pretrained`` on a model patched the same
way gives back the trained model (LoRA weights, norms, embeddings and the variant's own weights)."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from tiny_models import tiny_llama, tiny_whisper, whisper_features
from training_batches import fresh_accelerate_state, speech_samples, token_samples  # noqa: F401

from hf_efficient_attn import is_patched, patch_model, unpatch_model
from hf_efficient_attn.train import TrainConfig, TrainError, load_adapters, save_adapters, train

IDS = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(2))
PATCHES = {"linear": ("linear", {}), "sliding": ("sliding", {"window": 4})}


def trained(tmp_path, model, samples, steps=3):
    config = TrainConfig(
        steps=steps, batch_size=4, learning_rate=5e-2, output_dir=str(tmp_path / "run"), progress=False
    )
    return train(model, samples, config)


def logits(model, **inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("patch", sorted(PATCHES))
def test_peft_reloads_the_trained_llama_exactly(tmp_path, patch):
    variant, options = PATCHES[patch]
    result = trained(tmp_path, patch_model(tiny_llama(), variant, **options), token_samples(97))
    expected = logits(result.model, input_ids=IDS)
    fresh = patch_model(tiny_llama(), variant, **options)
    assert (expected - logits(fresh, input_ids=IDS)).abs().max() > 1e-3
    if variant == "linear":  # the variant's weights trained, so the adapter must carry them
        trained_weight = result.model.get_base_model().model.layers[0].self_attn.efficient_attn.weight
        assert not torch.equal(trained_weight, fresh.model.layers[0].self_attn.efficient_attn.weight)

    save_adapters(result.model, tmp_path / "adapter")
    for folder in (tmp_path / "adapter", f"{result.checkpoint}/model"):
        reloaded = PeftModel.from_pretrained(patch_model(tiny_llama(), variant, **options), str(folder)).eval()
        torch.testing.assert_close(logits(reloaded, input_ids=IDS), expected, atol=0, rtol=0)

    merged = load_adapters(patch_model(tiny_llama(), variant, **options), tmp_path / "adapter").merge_and_unload()
    assert is_patched(merged)
    torch.testing.assert_close(logits(merged, input_ids=IDS), expected, atol=1e-5, rtol=0)


def test_whisper_head_stays_tied_to_the_trained_embedding_and_reloads_exactly(tmp_path):
    result = trained(tmp_path, patch_model(tiny_whisper(), "sliding", window=4), speech_samples(tiny_whisper()), 2)
    base = result.model.get_base_model()
    assert base.proj_out.weight is base.model.decoder.embed_tokens.weight
    assert not torch.equal(base.proj_out.weight, tiny_whisper().proj_out.weight)
    inputs = {"input_features": whisper_features(base), "decoder_input_ids": IDS[:, :6]}
    expected = logits(result.model, **inputs)

    reloaded = PeftModel.from_pretrained(
        patch_model(tiny_whisper(), "sliding", window=4), f"{result.checkpoint}/model"
    ).eval()
    torch.testing.assert_close(logits(reloaded, **inputs), expected, atol=0, rtol=0)


def test_an_adapter_without_variant_weights_loads_onto_the_unpatched_model(tmp_path):
    result = trained(tmp_path, patch_model(tiny_llama(), "sliding", window=4), token_samples(97))
    save_adapters(result.model, tmp_path / "adapter")
    expected = logits(unpatch_model(result.model), input_ids=IDS)
    reloaded = load_adapters(tiny_llama(), tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(reloaded, input_ids=IDS), expected, atol=0, rtol=0)


@pytest.mark.parametrize("patch", [None, ("sliding", {"window": 4}), ("linear", {"layers": [0]})])
def test_variant_weights_need_the_trained_patch(tmp_path, patch):
    result = trained(tmp_path, patch_model(tiny_llama(), "linear"), token_samples(97))
    save_adapters(result.model, tmp_path / "adapter")
    model = tiny_llama() if patch is None else patch_model(tiny_llama(), patch[0], **patch[1])
    names = sorted(name for name, _ in model.named_modules())
    with pytest.raises(TrainError, match=r"patch it with the same variant.*patch_model\(model, 'linear', layers=\[0, 1, 2\]"):
        load_adapters(model, tmp_path / "adapter")
    assert sorted(name for name, _ in model.named_modules()) == names
