"""Whisper-large-v3's encoder at lengths past its own 1500 positions."""

from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks.whole_model.family import Family, init_std


class Whisper(Family):
    """1280 wide, 32 layers, 20 heads of 64, built with max_source_positions = each length; the input is
    2 x length mel frames (the convolutions halve them)."""

    name, title, length_flag = "whisper", "Whisper encoder (large-v3 shapes)", "--whisper-lengths"

    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, layers: int | None = None):
        super().__init__(args, device, dtype, layers)
        self.lengths = args.whisper_lengths or ([16, 32, 64] if self.tiny else [1500, 6000, 24000])
        self.window = args.encoder_window or (24 if self.tiny else 512)
        self.check_length = 12 if self.tiny else 448

    def describe(self, length: int) -> str:
        return f"{length} positions ({2 * length} mel frames)"

    def new_model(self, length: int) -> nn.Module:
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        if self.tiny:
            shape = dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128, num_mel_bins=8)
        else:
            shape = dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                         num_mel_bins=128)
        if self.layers is not None:
            shape["encoder_layers"] = self.layers
        config = WhisperConfig(**shape, max_source_positions=length, decoder_layers=1,
                               init_std=init_std(shape["d_model"]))
        return WhisperEncoder._from_config(config, dtype=self.dtype, attn_implementation="sdpa")

    def inputs(self, model: nn.Module, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        features = torch.randn(1, model.config.num_mel_bins, 2 * length, generator=generator)
        return {"input_features": features.to(self.device, self.dtype)}
