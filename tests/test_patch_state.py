"""`is_patched` says whether a variant runs; switching the attention implementation by hand stays consistent."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_efficient_attn import is_patched, patch_model, unpatch_model
from hf_efficient_attn.api import CONFIG_RECORD, PatchError, carries_patch, patched_variants
from hf_efficient_attn.interface import IMPLEMENTATION_NAME, register


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_our_implementation_without_a_patch_is_exact_and_not_patched(llama):
    ids = torch.randint(3, llama.config.vocab_size, (1, 24))
    expected = logits(llama, ids)
    model = copy.deepcopy(llama)
    register()
    model.set_attn_implementation(IMPLEMENTATION_NAME)
    assert not is_patched(model) and not carries_patch(model)
    torch.testing.assert_close(logits(model, ids), expected)
    patch_model(model, "sliding", window=4)
    assert is_patched(model)
    unpatch_model(model)
    assert model.config._attn_implementation == "sdpa"  # not back to ours: it ran exact attention then
    torch.testing.assert_close(logits(model, ids), expected)


def test_switching_a_patched_model_away_is_refused_until_unpatched(llama):
    ids = torch.randint(3, llama.config.vocab_size, (1, 24))
    expected = logits(llama, ids)
    model = patch_model(copy.deepcopy(llama), "sliding", window=4)
    patched = logits(model, ids)
    assert (patched - expected).abs().max() > 1e-3
    with pytest.raises(PatchError, match=r"runs hf_efficient_attn's 'sliding' attention; set_attn_implementation\('eager'\).*"
                                         r"unpatch_model\(model\) first: it restores 'sdpa'"):
        model.set_attn_implementation("eager")
    with pytest.raises(PatchError, match="unpatch_model"):
        model.set_attn_implementation({"": "sdpa"})
    assert is_patched(model) and model.config._attn_implementation == IMPLEMENTATION_NAME
    assert torch.equal(logits(model, ids), patched)
    model.set_attn_implementation(IMPLEMENTATION_NAME)  # no switch: allowed
    unpatch_model(model)
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    torch.testing.assert_close(logits(model, ids), expected)


def test_a_model_switched_away_behind_the_guard_is_not_patched_and_unpatch_cleans_it(llama):
    """Setting the config's implementation directly bypasses ``set_attn_implementation``: the model runs
    transformers' attention, `is_patched` says so, and patching again asks to unpatch first."""
    ids = torch.randint(3, llama.config.vocab_size, (1, 24))
    expected = logits(llama, ids)
    model = patch_model(copy.deepcopy(llama), "sliding", window=4)
    model.config._attn_implementation = "sdpa"
    assert not is_patched(model) and carries_patch(model)
    torch.testing.assert_close(logits(model, ids), expected)
    with pytest.raises(PatchError, match="earlier patch but runs 'sdpa' attention now; call unpatch_model"):
        patch_model(model, "sliding", window=8)
    unpatch_model(model)
    assert not carries_patch(model) and not patched_variants(model) and not hasattr(model.config, CONFIG_RECORD)
    patch_model(model, "sliding", window=8)
    assert is_patched(model)


def test_a_loaded_patched_checkpoint_is_unpatched_before_another_patch(llama, tmp_path):
    patch_model(copy.deepcopy(llama), "sliding", window=4).save_pretrained(tmp_path)
    loaded = type(llama).from_pretrained(tmp_path)
    assert is_patched(loaded)
    with pytest.raises(PatchError, match="already patched; call unpatch_model"):
        patch_model(loaded, "sparse", block_size=4)
    patch_model(unpatch_model(loaded), "sparse", block_size=4)
    assert is_patched(loaded) and loaded.config.efficient_attention["variant"] == "sparse"
