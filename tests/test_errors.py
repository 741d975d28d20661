"""Bad requests raise clear errors and leave the model exactly as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertModel

from hf_efficient_attn import (
    PatchError,
    SlidingOptions,
    UnsupportedModelError,
    VariantError,
    is_patched,
    list_variants,
    patch_model,
    unpatch_model,
)


def snapshot(model):
    return (
        model.config._attn_implementation,
        sorted(name for name, _ in model.named_modules()),
        {name: tensor.clone() for name, tensor in model.state_dict().items()},
    )


def assert_unchanged(model, before):
    after = snapshot(model)
    assert after[0] == before[0]
    assert after[1] == before[1]
    assert all(torch.equal(after[2][name], tensor) for name, tensor in before[2].items())
    assert not is_patched(model)
    assert not hasattr(model.config, "efficient_attention")


@pytest.mark.parametrize(
    ("args", "options", "error", "message"),
    [
        (("banana",), {}, PatchError, "Unknown variant 'banana'. Available:"),
        (("sliding",), {"windw": 3}, PatchError, "Unknown option(s) windw for variant 'sliding'"),
        (("sliding",), {"window": 0}, VariantError, "`window` must be an integer >= 1, got 0"),
        (("sliding",), {"window": -4}, VariantError, "`window` must be an integer >= 1"),
        (("sliding",), {"window": 2.5}, VariantError, "`window` must be an integer"),
        (("sliding",), {"sink_tokens": -1}, VariantError, "`sink_tokens` must be an integer >= 0"),
        (("sliding",), {"global_tokens": 2}, VariantError, "`global_tokens` needs bidirectional attention"),
        (("sliding",), {"neighbourhood": "2d"}, VariantError, "neighbourhood='2d' needs a patch grid"),
        (("sliding",), {"neighbourhood": "3d"}, VariantError, "`neighbourhood` must be '1d' or '2d'"),
        (("full",), {"layers": [7]}, PatchError, "Layer index 7 is out of range for the decoder stack, which has 3"),
        (("full",), {"layers": []}, PatchError, "selected no layer"),
        (("full",), {"targets": ["encoder"]}, PatchError, "Unknown target(s) ['encoder']; this model has: decoder"),
    ],
)
def test_bad_requests_raise_and_leave_model_unchanged(llama, args, options, error, message):
    before = snapshot(llama)
    with pytest.raises(error) as raised:
        patch_model(llama, *args, **options)
    assert message in str(raised.value)
    assert_unchanged(llama, before)


def test_unsupported_model_names_supported_ones():
    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    before = snapshot(model)
    with pytest.raises(UnsupportedModelError, match="model_type='bert'.*Supported model types: llama, mistral, qwen2, vit, whisper"):
        patch_model(model, "sliding", window=4)
    assert_unchanged(model, before)


def test_patching_twice_is_refused(llama):
    patch_model(llama, "sliding", window=4)
    with pytest.raises(PatchError, match="already patched; call unpatch_model"):
        patch_model(llama, "full")
    assert llama.config.efficient_attention["variant"] == "sliding"


def test_unpatch_unpatched_model_is_refused(llama):
    with pytest.raises(PatchError, match="not patched"):
        unpatch_model(llama)


def test_options_object_and_keywords_are_exclusive(llama):
    with pytest.raises(PatchError, match="not both"):
        patch_model(llama, SlidingOptions(window=4), window=5)
    assert not is_patched(llama)


def test_options_object_is_accepted(llama):
    patch_model(llama, SlidingOptions(window=4, sink_tokens=1))
    assert llama.config.efficient_attention["options"] == {
        "window": 4, "sink_tokens": 1, "global_tokens": 0, "neighbourhood": "1d", "backend": "auto",
    }


def test_list_variants_describes_each(llama):
    variants = list_variants()
    assert {"full", "sliding"} <= set(variants)
    assert all(isinstance(text, str) and text for text in variants.values())


def test_whisper_targets_default_to_self_attention(whisper):
    patched = patch_model(copy.deepcopy(whisper), "sliding", window=4)
    names = [name for name, _ in patched.named_modules() if name.endswith("efficient_attn")]
    assert names and not any("encoder_attn" in name for name in names)
    assert patched.config.efficient_attention["targets"] == ["encoder", "decoder"]


def test_sliding_is_refused_on_cross_attention(whisper):
    before = snapshot(whisper)
    with pytest.raises(VariantError, match="cannot run on cross-attention.*Variants that can: flash, full"):
        patch_model(whisper, "sliding", window=4, targets=["cross"])
    assert_unchanged(whisper, before)
