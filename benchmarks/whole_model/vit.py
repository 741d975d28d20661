"""ViT-B/16 at high resolution."""

from __future__ import annotations

import argparse

import torch
from torch import nn

from benchmarks.whole_model.family import Family, init_std


class ViT(Family):
    """768 wide, 12 layers, 12 heads of 64; a length is an image size in px: 1 + (size / 16)^2 tokens."""

    name, title, length_flag = "vit", "ViT-B/16 at high resolution", "--vit-sizes"

    def __init__(self, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, layers: int | None = None):
        super().__init__(args, device, dtype, layers)
        self.patch = 4 if self.tiny else 16
        self.lengths = args.vit_sizes or ([16, 32, 64] if self.tiny else [512, 1024, 2048, 4096])
        self.window = args.encoder_window or (24 if self.tiny else 512)
        self.check_length = 12 if self.tiny else 320

    def tokens(self, length: int) -> int:
        return 1 + (length // self.patch) ** 2

    def describe(self, length: int) -> str:
        return f"{length}x{length} px, {self.tokens(length)} tokens"

    def new_model(self, length: int) -> nn.Module:
        from transformers import ViTConfig, ViTModel

        if self.tiny:
            shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        else:
            shape = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
        if self.layers is not None:
            shape["num_hidden_layers"] = self.layers
        config = ViTConfig(**shape, image_size=length, patch_size=self.patch, initializer_range=init_std(shape["hidden_size"]))
        return ViTModel._from_config(config, dtype=self.dtype, attn_implementation="sdpa", add_pooling_layer=False)

    def inputs(self, model: nn.Module, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.randn(1, 3, length, length, generator=generator)
        return {"pixel_values": pixels.to(self.device, self.dtype)}
