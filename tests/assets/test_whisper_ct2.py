"""CTranslate2 → Hugging Face Whisper conversion, on tiny random models written in CTranslate2's layout."""

from __future__ import annotations

import pytest
import torch
from ct2_writer import (
    TIED_OUTPUT,
    byte_level_tokenizer,
    whisper_ct2_variables,
    write_ct2_file,
    write_ct2_whisper,
)
from tiny_models import tiny_whisper
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from hf_efficient_attn.assets.ct2_format import read_ct2_model
from hf_efficient_attn.assets.whisper_ct2 import WhisperConversionError, convert_whisper_ct2, whisper_weights

TOKENIZER_SIZE = 256 + 9
"""The test tokenizer: byte-level tokens and Whisper's special tokens (see ct2_writer)."""


def random_whisper(vocab_size: int = TOKENIZER_SIZE + 1501) -> WhisperForConditionalGeneration:
    """A tiny Whisper whose every weight (biases and norms included) is random, so no mapping can hide."""
    model = tiny_whisper(vocab_size=vocab_size)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


CT2_CONFIG = {"alignment_heads": [[1, 0], [1, 3]], "suppress_ids": [3, 5, 260], "suppress_ids_begin": [220, 256]}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    model = random_whisper()
    source = write_ct2_whisper(tmp_path_factory.mktemp("ct2"), model, config=CT2_CONFIG)
    output = convert_whisper_ct2(source, tmp_path_factory.mktemp("hf"))
    return model, output


def test_round_trip_gives_identical_weights_and_logits(converted):
    original, folder = converted
    loaded = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    expected, got = original.state_dict(), loaded.state_dict()
    assert set(expected) == set(got)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    features = torch.randn(2, original.config.num_mel_bins, 2 * original.config.max_source_positions)
    decoder_ids = torch.tensor([[257, 264, 40, 41, 42], [257, 264, 97, 98, 256]])
    with torch.no_grad():
        want = original(input_features=features, decoder_input_ids=decoder_ids).logits
        have = loaded(input_features=features, decoder_input_ids=decoder_ids).logits
    assert torch.equal(want, have)


def test_config_tokenizer_and_generation_settings(converted):
    original, folder = converted
    loaded = WhisperForConditionalGeneration.from_pretrained(folder)
    config, generation = loaded.config, loaded.generation_config
    for key in ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads",
                "encoder_ffn_dim", "decoder_ffn_dim", "num_mel_bins", "vocab_size", "max_source_positions",
                "max_target_positions"):
        assert getattr(config, key) == getattr(original.config, key), key
    assert config.tie_word_embeddings and loaded.proj_out.weight.data_ptr() == loaded.model.decoder.embed_tokens.weight.data_ptr()
    assert (config.decoder_start_token_id, config.eos_token_id, config.pad_token_id) == (257, 256, 256)
    assert generation.suppress_tokens == [3, 5, 260] and generation.begin_suppress_tokens == [220, 256]
    assert generation.alignment_heads == [[1, 0], [1, 3]]
    assert (generation.no_timestamps_token_id, generation.prev_sot_token_id) == (264, 262)
    assert generation.is_multilingual is False and not getattr(generation, "lang_to_id", None)

    processor = WhisperProcessor.from_pretrained(folder)
    tokenizer = processor.tokenizer
    assert len(tokenizer) == config.vocab_size
    assert tokenizer.convert_tokens_to_ids(["<|0.00|>", "<|30.00|>"]) == [TOKENIZER_SIZE, config.vocab_size - 1]
    assert tokenizer.decode(tokenizer("Hello there.").input_ids, skip_special_tokens=True) == "Hello there."
    assert processor.feature_extractor.feature_size == config.num_mel_bins


def test_float16_weights_widen_exactly(tmp_path):
    model = random_whisper(vocab_size=TOKENIZER_SIZE)
    folder = convert_whisper_ct2(write_ct2_whisper(tmp_path / "ct2", model, torch.float16), tmp_path / "hf")
    loaded = WhisperForConditionalGeneration.from_pretrained(folder)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor.half().float()), name


def test_bfloat16_output(tmp_path):
    model = random_whisper(vocab_size=TOKENIZER_SIZE)
    folder = convert_whisper_ct2(write_ct2_whisper(tmp_path / "ct2", model), tmp_path / "hf", dtype=torch.bfloat16)
    loaded = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.bfloat16)
    assert torch.equal(loaded.model.encoder.conv1.weight, model.model.encoder.conv1.weight.bfloat16())


def _variables():
    return whisper_ct2_variables(random_whisper(vocab_size=TOKENIZER_SIZE))


def _convert(tmp_path, variables, aliases=TIED_OUTPUT, spec="WhisperSpec"):
    write_ct2_file(tmp_path / "model.bin", variables, aliases, spec=spec)
    return whisper_weights(read_ct2_model(tmp_path / "model.bin"))


def test_missing_variable_is_named(tmp_path):
    variables = _variables()
    del variables["decoder/layer_1/attention/linear_2/bias"]
    with pytest.raises(WhisperConversionError, match="'decoder/layer_1/attention/linear_2/bias' is missing"):
        _convert(tmp_path, variables)


def test_unmapped_variable_is_named(tmp_path):
    variables = _variables()
    variables["decoder/layer_0/ffn/linear_0/weight_scale"] = torch.ones(64)
    with pytest.raises(WhisperConversionError, match="does not know how to map: decoder/layer_0/ffn/linear_0/weight_scale"):
        _convert(tmp_path, variables)


def test_unknown_alias_is_named(tmp_path):
    with pytest.raises(WhisperConversionError, match=r"encoder/extra \(alias of encoder/conv1/weight\)"):
        _convert(tmp_path, _variables(), {**TIED_OUTPUT, "encoder/extra": "encoder/conv1/weight"})


def test_nonzero_key_bias_is_refused(tmp_path):
    variables = _variables()
    variables["encoder/layer_0/self_attention/linear_0/bias"][40] = 0.5  # inside the key third (d_model 32)
    with pytest.raises(WhisperConversionError, match="non-zero key bias"):
        _convert(tmp_path, variables)


def test_other_architectures_are_refused(tmp_path):
    variables = _variables()
    variables["decoder/activation"] = torch.tensor(0, dtype=torch.int8)
    with pytest.raises(WhisperConversionError, match="decoder/activation is 0; Whisper has 3"):
        _convert(tmp_path, variables)
    with pytest.raises(WhisperConversionError, match="expected a CTranslate2 WhisperSpec model, got 'TransformerSpec'"):
        _convert(tmp_path, _variables(), spec="TransformerSpec")


def test_untied_projection_is_kept(tmp_path):
    variables = _variables()
    variables["decoder/projection/weight"] = torch.randn_like(variables["decoder/embeddings/weight"])
    weights, shape = _convert(tmp_path, variables, aliases={})
    assert shape["tie_word_embeddings"] is False
    assert torch.equal(weights["proj_out.weight"], variables["decoder/projection/weight"])


def test_tokenizer_must_match_the_vocabulary(tmp_path):
    model = random_whisper(vocab_size=TOKENIZER_SIZE + 7)
    with pytest.raises(WhisperConversionError, match="only the 1501 timestamp tokens may be missing"):
        convert_whisper_ct2(write_ct2_whisper(tmp_path / "ct2", model), tmp_path / "hf")
    assert byte_level_tokenizer(tmp_path / "t.json") == TOKENIZER_SIZE
