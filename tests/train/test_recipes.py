"""Each recipe trains what it should and lowers the loss on a fixed batch; nonsense recipes are refused."""

from __future__ import annotations

import pytest
from tiny_models import tiny_llama, tiny_vit, tiny_whisper
from training_batches import fresh_accelerate_state, image_samples, losses, speech_samples, token_samples  # noqa: F401

from hf_efficient_attn import patch_model
from hf_efficient_attn.train import TrainConfig, TrainError, prepare_model, train
from hf_efficient_attn.train.targets import attention_projections, mlp_projections


def quick(**overrides) -> TrainConfig:
    return TrainConfig(
        **{"steps": 4, "batch_size": 4, "log_every": 1, "learning_rate": 1e-2, "progress": False, **overrides}
    )


def trainable(model) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def test_lora_on_sliding_llama_lowers_loss():
    model = patch_model(tiny_llama(), "sliding", window=6)
    result = train(model, token_samples(97), quick())
    curve = losses(result)
    assert len(curve) == 4 and curve[-1] < curve[0] - 0.05


def test_lora_trains_adapters_norms_embeddings_and_variant_state():
    model = prepare_model(patch_model(tiny_llama(), "linear"), TrainConfig())
    names = trainable(model)
    assert any(".q_proj.lora_A." in n for n in names) and any(".o_proj.lora_B." in n for n in names)
    assert not any("mlp" in n for n in names)
    copy = ".modules_to_save.default."  # PEFT trains and saves a copy of each module trained in full
    assert all(copy in n for n in names if "lora_" not in n)
    assert {n.removeprefix("base_model.model.").partition(copy)[0] for n in names if "lora_" not in n} == {
        "model.embed_tokens",
        "model.norm",
        *(f"model.layers.{i}.{m}" for i in range(3) for m in ("input_layernorm", "post_attention_layernorm")),
        *(f"model.layers.{i}.self_attn.efficient_attn" for i in range(3)),
    }
    assert not any(n.endswith("q_proj.base_layer.weight") for n in names)
    plain = prepare_model(
        patch_model(tiny_llama(), "sliding", window=4),
        TrainConfig(train_norms=False, train_embeddings=False, lora_mlp=True),
    )
    names = trainable(plain)
    assert all("lora_" in n for n in names) and any(".gate_proj.lora_A." in n for n in names)


def test_projection_names_come_from_the_models_own_modules():
    llama, whisper, vit = tiny_llama(), tiny_whisper(), tiny_vit()
    assert {n.rsplit(".", 1)[1] for n in attention_projections(llama)} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    }
    assert {n.rsplit(".", 1)[1] for n in mlp_projections(llama)} == {"gate_proj", "up_proj", "down_proj"}
    whisper_names = attention_projections(whisper)
    assert any("encoder_attn.out_proj" in n for n in whisper_names) and any(
        "encoder.layers.1.self_attn.q_proj" in n for n in whisper_names
    )
    vit_names = attention_projections(vit)
    assert len(vit_names) == 4 * vit.config.num_hidden_layers
    assert {n.rsplit(".", 1)[1] for n in mlp_projections(vit)} <= {
        "fc1",
        "fc2",
        "dense",
        "intermediate",
        "output",
    }


def test_transfer_on_linear_llama_then_lora():
    model = patch_model(tiny_llama(), "linear")
    result = train(
        model, token_samples(97), quick(recipe="transfer", transfer_steps=6, transfer_learning_rate=5e-2)
    )
    assert result.transfer_losses[-1] < result.transfer_losses[0]
    curve = losses(result)
    assert curve[-1] < curve[0]


def test_transfer_on_lowrank_vit():
    model = patch_model(tiny_vit(), "lowrank", rank=8)
    result = train(
        model, image_samples(model), quick(recipe="transfer", transfer_steps=4, transfer_learning_rate=1e-3)
    )
    assert result.transfer_losses[-1] < result.transfer_losses[0]
    curve = losses(result)
    assert curve[-1] < curve[0]


def test_full_on_vit_trains_everything():
    model = patch_model(tiny_vit(), "sliding", window=2)
    result = train(model, image_samples(model), quick(recipe="full", learning_rate=1e-3))
    assert all(parameter.requires_grad for parameter in result.model.parameters())
    curve = losses(result)
    assert curve[-1] < curve[0] - 0.05


def test_lora_on_whisper():
    model = patch_model(tiny_whisper(), "sliding", window=4)
    result = train(model, speech_samples(model), quick(steps=3, batch_size=2))
    curve = losses(result)
    assert curve[-1] < curve[0]
    names = trainable(result.model)
    assert any("encoder_attn.out_proj.lora_A" in n for n in names)


def test_transfer_refused_for_a_variant_without_parameters():
    model = patch_model(tiny_llama(), "sliding", window=4)
    with pytest.raises(TrainError, match="recipe='lora'.*'linear' or 'lowrank'"):
        prepare_model(model, TrainConfig(recipe="transfer"))
    with pytest.raises(TrainError, match="not patched"):
        train(tiny_llama(), token_samples(97), quick(recipe="transfer"))


def test_lora_refused_for_an_unknown_architecture():
    import torch

    with pytest.raises(TrainError, match="recipe='full'"):
        prepare_model(torch.nn.Linear(2, 2), TrainConfig())
