"""`prepare_model`: make a (patched) model trainable the way its recipe says.

``"lora"`` follows LongLoRA: LoRA adapters (PEFT) on the attention projections, and optionally the
MLP, while the normalization layers and the embeddings train in full; the variant's own per-layer
parameters (Linformer projections, learned feature maps) train too. Everything that trains besides
LoRA is PEFT's ``modules_to_save``: PEFT trains a copy of each such module, and `save_adapters` (PEFT's
``save_pretrained``) writes the copies into the adapter, so ``PeftModel.from_pretrained`` on a model
patched the same way gives back the trained model. Where the output head shares the input embedding's
weight (Whisper), PEFT's ``ensure_weight_tying`` makes the head use the trained copy's weight.
``"transfer"`` prepares the same way; its first stage, `attention_transfer`, runs before.
``"full"`` makes every parameter trainable.
"""

from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from ..api import patched_variants
from .config import TrainConfig, TrainError
from .targets import (
    attention_projections,
    mlp_projections,
    ties_output_to_input_embedding,
    trained_in_full,
    variant_parameters,
)


def prepare_model(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Make the model trainable per the recipe; returns the model to train (a PeftModel for lora/transfer)."""
    if isinstance(model, PeftModel):
        raise TrainError("The model is already a PeftModel; pass the plain (patched) model to prepare_model.")
    check_recipe(model, config)
    if config.recipe == "full":
        model.requires_grad_(True)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return model
    targets = attention_projections(model) + (mlp_projections(model) if config.lora_mlp else [])
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
        modules_to_save=trained_in_full(model, norms=config.train_norms, embeddings=config.train_embeddings)
        or None,
        ensure_weight_tying=config.train_embeddings and ties_output_to_input_embedding(model),
    )
    return get_peft_model(model, lora)


def check_recipe(model: nn.Module, config: TrainConfig) -> None:
    """Raise `TrainError` when ``config.recipe`` makes no sense for ``model``."""
    if config.recipe == "transfer":
        require_variant_parameters(model)


def require_variant_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The variants' own parameters, or `TrainError` saying which recipe to use when there are none."""
    parameters = variant_parameters(model)
    if not parameters:
        raise TrainError(
            "recipe='transfer' trains the attention variant's own parameters to match exact attention, but "
            f"this model's variant has none ({_variant_names(model)}). Use recipe='lora' (or 'full'), or patch "
            "with a variant that learns: 'linear' or 'lowrank'."
        )
    return parameters


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing through transformers' own switch."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise TrainError(
            f"{type(model).__name__} has no gradient checkpointing; pass gradient_checkpointing=False."
        )


def _variant_names(model: nn.Module) -> str:
    names = sorted({variant.name for variant in patched_variants(model)})
    return "variant " + ", ".join(map(repr, names)) if names else "the model is not patched"
