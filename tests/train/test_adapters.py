"""LoRA adapters with their fully trained extras save, reload onto a fresh patched model, and merge."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_llama
from training_batches import fresh_accelerate_state, token_samples  # noqa: F401

from hf_efficient_attn import is_patched, patch_model
from hf_efficient_attn.train import TrainConfig, TrainError, load_adapters, save_adapters, train


def trained(tmp_path):
    config = TrainConfig(
        steps=3, batch_size=4, learning_rate=5e-2, output_dir=str(tmp_path / "run"), progress=False
    )
    return train(patch_model(tiny_llama(), "linear"), token_samples(97), config)


def test_adapters_reload_onto_a_fresh_patched_model_and_merge(tmp_path):
    result = trained(tmp_path)
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = result.model(input_ids=ids).logits
        untrained = patch_model(tiny_llama(), "linear")(input_ids=ids).logits
    assert (expected - untrained).abs().max() > 1e-3

    save_adapters(result.model, tmp_path / "adapter")
    for folder in (tmp_path / "adapter", f"{result.checkpoint}/model"):
        reloaded = load_adapters(patch_model(tiny_llama(), "linear"), folder).eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, atol=1e-5, rtol=0)

    merged = reloaded.merge_and_unload()
    assert is_patched(merged)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


def test_loading_onto_a_differently_patched_model_is_refused(tmp_path):
    result = trained(tmp_path)
    save_adapters(result.model, tmp_path / "adapter")
    with pytest.raises(TrainError, match="patch it with the same variant"):
        load_adapters(patch_model(tiny_llama(), "sliding", window=4), tmp_path / "adapter")
