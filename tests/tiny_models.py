"""Tiny random-weight models of every supported family, built from configs (no download)."""

from __future__ import annotations

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    ViTConfig,
    ViTForImageClassification,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

DECODER_SHAPE = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**DECODER_SHAPE, **overrides})).eval()


def tiny_mistral(seed: int = 0, **overrides) -> MistralForCausalLM:
    torch.manual_seed(seed)
    return MistralForCausalLM(MistralConfig(**{**DECODER_SHAPE, "sliding_window": None, **overrides})).eval()


def tiny_qwen2(seed: int = 0, **overrides) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**{**DECODER_SHAPE, **overrides})).eval()


def tiny_whisper(seed: int = 0, **overrides) -> WhisperForConditionalGeneration:
    torch.manual_seed(seed)
    shape = dict(
        vocab_size=97,
        num_mel_bins=8,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=24,
        max_target_positions=64,
        decoder_start_token_id=1,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    config = WhisperConfig(**{**shape, **overrides})
    return WhisperForConditionalGeneration(config).eval()


def tiny_vit(seed: int = 0, **overrides) -> ViTForImageClassification:
    torch.manual_seed(seed)
    shape = dict(
        image_size=24,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=5,
    )
    config = ViTConfig(**{**shape, **overrides})
    return ViTForImageClassification(config).eval()


DECODERS = {"llama": tiny_llama, "mistral": tiny_mistral, "qwen2": tiny_qwen2}


def whisper_features(model: WhisperForConditionalGeneration, batch: int = 2, seed: int = 1) -> torch.Tensor:
    frames = model.config.max_source_positions * 2
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.config.num_mel_bins, frames, generator=generator)


def vit_pixels(model: ViTForImageClassification, batch: int = 2, seed: int = 1) -> torch.Tensor:
    size = model.config.image_size
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator)
