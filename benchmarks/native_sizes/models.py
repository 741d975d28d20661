"""The models of the rows (random weights of the real shapes), their inputs, and a column switched on."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from hf_efficient_attn import patch_model, unpatch_model

from .rows import ENCODER_WINDOW, OURS, SPARSE, WINDOW, Row


def build(family: str, cpu: bool, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """Random weights of the real shapes (the CPU mode: SmolLM2-135M, whisper-tiny and a small ViT)."""
    from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTModel, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(0)
    if family == "llama":
        shape = (dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192)
                 if cpu else
                 dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                      rope_theta=500000.0))
        config = LlamaConfig(**shape, tie_word_embeddings=True)
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    elif family == "whisper":
        shape = (dict(d_model=384, encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, num_mel_bins=80)
                 if cpu else
                 dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, num_mel_bins=128))
        model = WhisperEncoder._from_config(WhisperConfig(**shape, decoder_layers=1), dtype=dtype,
                                            attn_implementation="sdpa")
    else:
        shape = (dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768) if cpu
                 else dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072))
        model = ViTModel._from_config(ViTConfig(**shape, image_size=224, patch_size=16), dtype=dtype,
                                      attn_implementation="sdpa", add_pooling_layer=False)
    return model.to(device).eval()


def mistral_twin(model: nn.Module, window: int) -> nn.Module:
    """The Llama model's weights (shared, not copied) as a MistralForCausalLM with ``sliding_window``."""
    from transformers import MistralConfig, MistralForCausalLM

    source = model.config
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
              "tie_word_embeddings", "rope_theta")
    config = MistralConfig(**{f: getattr(source, f) for f in fields if hasattr(source, f)}, sliding_window=window)
    with torch.device("meta"):
        twin = MistralForCausalLM(config)
    twin.load_state_dict(model.state_dict(), assign=True)
    twin.model.rotary_emb = model.model.rotary_emb
    twin.set_attn_implementation("sdpa")
    return twin.eval()


def options(column: str, family: str) -> dict[str, Any]:
    if column == "sliding":
        return {"window": WINDOW if family == "llama" else ENCODER_WINDOW}
    return dict(SPARSE) if column == "sparse" else {}


class Configured:
    """The row's model switched to a column, and back afterwards (one set of weights for every column)."""

    def __init__(self, model: nn.Module, family: str, column: str):
        self.model, self.family, self.column = model, family, column

    def __enter__(self) -> nn.Module:
        if self.column in OURS:
            return patch_model(self.model, self.column, **options(self.column, self.family))
        if self.column == "hf-sliding":
            return mistral_twin(self.model, WINDOW)
        self.model.set_attn_implementation(self.column)
        return self.model

    def __exit__(self, *exc) -> None:
        if self.column in OURS:
            unpatch_model(self.model)
        self.model.set_attn_implementation("sdpa")


_GENERATIONS = itertools.count(1)


def prompt_length(row: Row, steps: int) -> int:
    """The prompt of a generation (or a forward, ``steps`` 0): the row's, or for rows of new lengths the
    row's plus a stretch past every earlier generation's last length (each covers ``steps + 1`` lengths
    after its prompt)."""
    return row.tokens + next(_GENERATIONS) * (steps + 2) if row.new_lengths else row.tokens


def inputs(row: Row, model: nn.Module, device: torch.device, dtype: torch.dtype,
           tokens: int | None = None) -> dict[str, torch.Tensor]:
    """The row's batch (``tokens``: a Llama prompt of another length than the row's)."""
    generator = torch.Generator().manual_seed(1)
    if row.family == "vit":
        return {"pixel_values": torch.randn(row.batch, 3, 224, 224, generator=generator).to(device, dtype)}
    if row.family == "whisper":
        mels = model.config.num_mel_bins
        return {"input_features": torch.randn(row.batch, mels, 2 * row.tokens, generator=generator).to(device, dtype)}
    # token 0 is the generation settings' pad token: a prompt holding it would be read as padded
    ids = torch.randint(1, model.config.vocab_size, (row.batch, tokens or row.tokens), generator=generator).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}  # as a tokenizer gives them


def forward(model: nn.Module, family: str, batch: dict) -> torch.Tensor:
    base = model.model if family == "llama" else model
    extra = {"use_cache": False} if family == "llama" else {}
    return base(**batch, **extra).last_hidden_state
