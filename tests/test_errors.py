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
    with pytest.raises(UnsupportedModelError, match="model_type='bert'.*Supported model types: cohere, gemma, gemma3_text, granite, llama, mistral, olmo2, phi3, qwen2, qwen3, smollm3, starcoder2, vit, whisper"):
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


@pytest.mark.parametrize(
    ("build", "variant", "options", "message"),
    [
        ("vit", "sliding", {"window": 2, "sink_tokens": 40}, "sink_tokens=40 covers all 37 tokens of this model's "
         "encoder layers"),
        ("vit", "sliding", {"window": 2, "global_tokens": 37}, "global_tokens=37 covers all 37 tokens"),
        ("vit", "sparse", {"block_size": 64}, "block_size=64 puts in one block all 37 tokens"),
        ("llama", "sparse", {"block_size": 256}, "block_size=256 puts in one block all 256 positions this model's "
         "decoder layers take"),
        ("whisper", "sparse", {"block_size": 32, "pattern": "block"}, "block_size=32 puts in one block all 24 tokens"),
    ],
)
def test_options_that_cover_every_token_warn_and_give_exact_attention(build, variant, options, message):
    """Sinks, globals or a block that hold every token a layer can see leave nothing out: patching warns
    (saying so and what to use) and the patched model gives the unpatched model's outputs."""
    from tiny_models import tiny_llama, tiny_vit, tiny_whisper, vit_pixels, whisper_features

    from hf_efficient_attn import ExactPatternWarning

    model = {"vit": tiny_vit, "llama": tiny_llama, "whisper": tiny_whisper}[build]().eval()
    inputs = {"vit": lambda: {"pixel_values": vit_pixels(model)},
              "llama": lambda: {"input_ids": torch.randint(3, 97, (2, 11), generator=torch.Generator().manual_seed(0))},
              "whisper": lambda: {"input_features": whisper_features(model),
                                  "decoder_input_ids": torch.randint(3, 97, (2, 5))}}[build]()
    with torch.no_grad():
        expected = model(**inputs).logits
    with pytest.warns(ExactPatternWarning, match=message.replace("(", r"\(")):
        patched = patch_model(copy.deepcopy(model), variant, **options)
    with torch.no_grad():
        torch.testing.assert_close(patched(**inputs).logits, expected, rtol=1e-5, atol=1e-5)


def test_options_inside_the_tokens_do_not_warn(vit, llama):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        patch_model(copy.deepcopy(vit), "sliding", window=2, sink_tokens=1)
        patch_model(copy.deepcopy(vit), "sparse", block_size=8)
        patch_model(copy.deepcopy(llama), "sparse", block_size=16)


def test_a_decoder_prompt_inside_one_block_warns_once_and_is_exact(llama):
    """A decoder's length varies per call, so `patch_model` cannot tell; a prompt that fits in one block is
    exact attention, which the first such call says (once per block size), and decoding steps never do."""
    import warnings

    from hf_efficient_attn import ExactPatternWarning
    from hf_efficient_attn.variants import sparse

    sparse._WARNED_ONE_BLOCK.discard(("block_size", 48))
    llama = llama.eval()
    ids = torch.randint(3, 97, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = llama(input_ids=ids).logits
    model = patch_model(copy.deepcopy(llama), "sparse", block_size=48)
    with torch.no_grad(), pytest.warns(ExactPatternWarning, match="block_size=48 puts all 20 tokens of this call in "
                                                                  "one block, so its attention is exact"):
        got = model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        model(input_ids=ids[:, :12])  # warned once already
        model.generate(ids, max_new_tokens=3, do_sample=False)


def test_a_standalone_whisper_decoder_is_patched_like_the_whole_model(whisper):
    """`patch_model` on a `WhisperDecoder` alone attaches the variant to its self-attention, with the
    results of the same decoder inside the whole patched model."""
    from tiny_models import whisper_features

    whisper = whisper.eval()
    with torch.no_grad():
        encoded = whisper.model.encoder(whisper_features(whisper)).last_hidden_state
    ids = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    whole = patch_model(copy.deepcopy(whisper), "sliding", window=3, targets=["decoder"])
    alone = patch_model(copy.deepcopy(whisper.model.decoder), "sliding", window=3)
    with torch.no_grad():
        expected = whole.model.decoder(input_ids=ids, encoder_hidden_states=encoded).last_hidden_state
        got = alone(input_ids=ids, encoder_hidden_states=encoded).last_hidden_state
        unpatched = whisper.model.decoder(input_ids=ids, encoder_hidden_states=encoded).last_hidden_state
    assert is_patched(alone)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.allclose(got, unpatched)  # the window of 3 leaves keys out


def test_a_model_without_attention_layers_the_adapter_knows_is_refused():
    from tiny_models import tiny_llama

    model = tiny_llama(num_hidden_layers=0)
    before = snapshot(model)
    with pytest.raises(UnsupportedModelError, match="Found no attention layers in this LlamaForCausalLM"):
        patch_model(model, "sliding", window=4)
    assert_unchanged(model, before)
