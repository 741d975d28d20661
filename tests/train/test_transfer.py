"""Attention transfer: the variant learns exact attention, nothing else moves, later layers see exact inputs."""

from __future__ import annotations

import torch
from tiny_models import tiny_llama
from torch.utils.data import DataLoader
from training_batches import fresh_accelerate_state, token_samples  # noqa: F401

from hf_efficient_attn import patch_model
from hf_efficient_attn.train import TrainConfig, attention_transfer
from hf_efficient_attn.train.transfer import matching_exact_attention


def test_transfer_lowers_matching_loss_and_touches_only_variant_parameters():
    model = patch_model(tiny_llama(), "linear")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    loader = DataLoader(token_samples(97, distinct=True), batch_size=4)
    config = TrainConfig(recipe="transfer", transfer_steps=6, transfer_learning_rate=5e-2, progress=False)
    losses = attention_transfer(model, loader, config)
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0]
    for name, parameter in model.named_parameters():
        changed = not torch.equal(parameter, before[name])
        assert changed == ("efficient_attn" in name), name
        assert parameter.requires_grad == flags[name]


def test_matching_feeds_exact_attention_forward():
    exact = tiny_llama()
    model = patch_model(tiny_llama(), "linear")
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(input_ids=ids).logits - exact(input_ids=ids).logits).abs().max() > 1e-4
        with matching_exact_attention(model) as layer_losses:
            matched = model(input_ids=ids).logits
    torch.testing.assert_close(matched, exact(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    assert len(layer_losses) == exact.config.num_hidden_layers and all(loss > 0 for loss in layer_losses)
