"""Patched models read no GPU values on the host inside their layers.

A host read (``bool(t)``, ``t.item()``, ``int(t)``, ``t.tolist()``, ``nonzero``) of a CUDA tensor waits for
every kernel queued before it, so one per layer keeps the GPU idle between layers. Reads once per forward
(as transformers' own mask code does) are fine. Each test counts the reads during one forward of a model
with one and with two layers: the count must not grow with the depth.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from hf_efficient_attn import patch_model

sys.path.insert(0, str(Path(__file__).parent.parent))

from tiny_models import tiny_llama, tiny_vit, tiny_whisper, vit_pixels, whisper_features  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HOST_READS = {torch.Tensor.__bool__, torch.Tensor.item, torch.Tensor.__int__, torch.Tensor.__index__,
              torch.Tensor.__float__, torch.Tensor.tolist, torch.Tensor.nonzero, torch.nonzero}
VARIANTS = {"flash": {}, "sliding": {"window": 8}, "sparse": {"block_size": 16}}


class HostReads(TorchFunctionMode):
    """Counts tensor reads on the host while active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def reads_in_forward(model: torch.nn.Module, inputs: dict, inference_mode: bool = False) -> int:
    with torch.inference_mode() if inference_mode else torch.no_grad():
        model(**inputs)  # first call: layouts and tile lists are built and kept
        with HostReads() as reads:
            model(**inputs)
    return reads.count


def padded_llama(layers: int, left: bool = False) -> tuple[torch.nn.Module, dict]:
    model = tiny_llama(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=layers)
    mask = torch.ones(2, 40, dtype=torch.long)
    if left:
        mask[1, :7] = 0
    else:
        mask[1, 33:] = 0
    ids = torch.randint(3, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    return model, {"input_ids": ids.to(DEVICE), "attention_mask": mask.to(DEVICE), "use_cache": False}


def vit(layers: int) -> tuple[torch.nn.Module, dict]:
    model = tiny_vit(hidden_size=64, num_attention_heads=2, num_hidden_layers=layers)
    return model, {"pixel_values": vit_pixels(model).to(DEVICE)}


def whisper_encoder(layers: int) -> tuple[torch.nn.Module, dict]:
    model = tiny_whisper(d_model=64, encoder_attention_heads=2, decoder_attention_heads=2, encoder_layers=layers)
    return model.model.encoder, {"input_features": whisper_features(model).to(DEVICE)}


MODELS: dict[str, Callable[[int], tuple[torch.nn.Module, dict]]] = {
    "llama-right-padded": padded_llama, "llama-left-padded": lambda layers: padded_llama(layers, left=True),
    "vit": vit, "whisper-encoder": whisper_encoder}
# block layouts count from each row's first real token: left-padded rows leave the fused path (tested elsewhere)
CASES = [(family, variant) for family in sorted(MODELS) for variant in sorted(VARIANTS)
         if (family, variant) != ("llama-left-padded", "sparse")]


@pytest.mark.parametrize(("family", "variant"), CASES)
def test_host_reads_do_not_grow_with_depth(family, variant):
    counts = {}
    for layers in (1, 2):
        model, inputs = MODELS[family](layers)
        baseline = reads_in_forward(model.to(DEVICE), inputs)
        patched = patch_model(model, variant, backend="triton", **VARIANTS[variant])
        counts[layers] = reads_in_forward(patched, inputs) - baseline
    assert counts[2] == counts[1], f"host reads per forward beyond the unpatched model's: {counts}"
    assert counts[1] <= 1, f"host reads per forward beyond the unpatched model's: {counts}"


def test_padded_batches_read_once_per_forward_in_inference_mode():
    """Tensors made in inference mode cannot be remembered across calls; the padding facts are kept on the
    mask layout the model builds once per forward instead."""
    counts = {}
    for layers in (1, 2):
        model, inputs = padded_llama(layers, left=True)
        baseline = reads_in_forward(model.to(DEVICE), inputs, inference_mode=True)
        patched = patch_model(model, "sliding", backend="triton", window=8)
        counts[layers] = reads_in_forward(patched, inputs, inference_mode=True) - baseline
    assert counts[2] == counts[1] <= 1, f"host reads per forward beyond the unpatched model's: {counts}"
