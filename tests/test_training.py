"""Training-time behaviour: dropout, gradient checkpointing, PEFT's LoRA on a patched model."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from hf_efficient_attn import PatchError, is_patched, patch_model


def batch(model, length=24, seed=4):
    ids = torch.randint(3, model.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids}


def test_attention_dropout_applies_only_in_training():
    from tiny_models import tiny_llama

    model = patch_model(tiny_llama(attention_dropout=0.5), "sliding", window=6)
    inputs = batch(model)
    model.eval()
    assert torch.equal(model(**inputs).logits, model(**inputs).logits)
    model.train()
    first, second = model(**inputs).logits, model(**inputs).logits
    assert not torch.allclose(first, second)
    assert torch.isfinite(first).all()


def test_gradient_checkpointing_gives_same_gradients(llama):
    model = patch_model(copy.deepcopy(llama), "sliding", window=5, sink_tokens=1)
    model.train()
    inputs = batch(model)

    def grads():
        model.zero_grad()
        model(**inputs).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = grads()
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    checkpointed = grads()
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)


@pytest.mark.parametrize("variant_options", [{"window": 6}, {"window": 6, "sink_tokens": 2}])
def test_peft_lora_on_patched_model(llama, variant_options):
    model = patch_model(copy.deepcopy(llama), "sliding", **variant_options)
    inputs = batch(model)
    before = model(**inputs).logits
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_alpha=8))
    assert is_patched(peft_model.base_model.model)
    assert (peft_model(**inputs).logits - before).abs().max().item() < 1e-6  # LoRA starts as a no-op
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    first = peft_model(**inputs).loss
    for _ in range(5):
        optimizer.zero_grad()
        loss = peft_model(**inputs).loss
        loss.backward()
        optimizer.step()
    assert peft_model(**inputs).loss < first
    merged = peft_model.merge_and_unload()
    assert is_patched(merged)
    assert (merged(**inputs).logits - peft_model(**inputs).logits).abs().max().item() < 1e-5


def test_patching_a_peft_model_is_refused_and_changes_nothing(llama):
    peft_model = get_peft_model(llama, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    modules = [name for name, _ in peft_model.named_modules()]
    for wrapped in (peft_model, peft_model.base_model):
        with pytest.raises(PatchError, match=r"wrapped by PEFT.*patch_model\(model, \.\.\.\) before get_peft_model"):
            patch_model(wrapped, "sliding", window=4)
    assert [name for name, _ in peft_model.named_modules()] == modules
    assert not is_patched(peft_model)
