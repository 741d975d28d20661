"""Convert a CTranslate2 Whisper model (``model.bin``, ``config.json``, ``tokenizer.json``) to a Hugging Face folder.

The result is a standard ``WhisperForConditionalGeneration`` checkpoint with its tokenizer, feature
extractor and generation config, loadable with ``from_pretrained`` and usable with ``generate()``.

How CTranslate2's ``WhisperSpec`` lays out the weights (``N`` a layer index):

- ``encoder/conv1``, ``encoder/conv2``, ``encoder/position_encodings/encodings``, ``encoder/layer_norm``;
- ``encoder/layer_N/self_attention/linear_0``: q, k and v projections fused along the output rows
  (``3·d × d``); ``linear_1`` the output projection; ``layer_norm`` the pre-attention norm;
- ``{encoder,decoder}/layer_N/ffn/{layer_norm, linear_0, linear_1}``: pre-norm, fc1, fc2;
- ``decoder/embeddings/weight``, ``decoder/position_encodings/encodings``, ``decoder/layer_norm``;
- ``decoder/layer_N/self_attention``: as in the encoder (fused q, k, v);
- ``decoder/layer_N/attention`` (cross-attention): ``linear_0`` the query, ``linear_1`` key and value
  fused (``2·d × d``), ``linear_2`` the output projection;
- ``decoder/projection/weight``: an alias of the token embedding (tied output layer);
- scalars describing the architecture, checked against what Whisper is (GELU, pre-norm, no scaling).

Hugging Face's Whisper has no key bias; CTranslate2 stores zeros in its place, and the converter
refuses a non-zero one. Every variable of the file is used or checked, every weight of the model is
set: anything else is an error, never a silent default.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AddedToken,
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizerFast,
)

from .ct2_format import CT2Model, read_ct2_model

GELU = 3
"""CTranslate2's ``ActivationType`` id of the exact (erf) GELU, Whisper's activation."""

EXPECTED_FLAGS = {
    "decoder/activation": GELU,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/alibi": 0,
    "decoder/start_from_zero_embedding": 0,
}
"""Architecture scalars and the value Whisper has; any other value is a model this converter cannot map."""

UNUSED_SCALARS = ("decoder/alignment_heads", "decoder/alignment_layer")
"""Settings of CTranslate2's generic decoder for translation alignments; Whisper's own alignment heads
come from ``config.json``."""

TIMESTAMPS = 1501
"""Whisper's timestamp tokens ``<|0.00|>`` … ``<|30.00|>``: the last ids of the vocabulary."""

MULTILINGUAL_VOCAB = 51865
"""Whisper models with at least this many tokens are multilingual (OpenAI's own test)."""


class WhisperConversionError(ValueError):
    """The CTranslate2 model cannot be mapped onto ``WhisperForConditionalGeneration`` exactly."""


class _Variables:
    """The file's variables, handed out once each, so that unused ones can be reported."""

    def __init__(self, model: CT2Model):
        if model.spec != "WhisperSpec":
            raise WhisperConversionError(f"expected a CTranslate2 WhisperSpec model, got {model.spec!r}")
        self.remaining = dict(model.variables)
        self.aliases = dict(model.aliases)

    def take(self, name: str) -> torch.Tensor:
        if name not in self.remaining:
            raise WhisperConversionError(f"variable {name!r} is missing from the CTranslate2 model")
        return self.remaining.pop(name)

    def scalar(self, name: str) -> int:
        value = self.take(name)
        if value.numel() != 1:
            raise WhisperConversionError(f"variable {name!r} should be a scalar, has shape {tuple(value.shape)}")
        return int(value.item())

    def layer_count(self, stack: str) -> int:
        count = 0
        while any(name.startswith(f"{stack}/layer_{count}/") for name in self.remaining):
            count += 1
        if count == 0:
            raise WhisperConversionError(f"the CTranslate2 model has no {stack} layers")
        return count

    def finish(self) -> None:
        if self.remaining or self.aliases:
            unused = sorted(self.remaining) + [f"{a} (alias of {t})" for a, t in sorted(self.aliases.items())]
            raise WhisperConversionError(f"variables the converter does not know how to map: {', '.join(unused)}")


def _split_rows(tensor: torch.Tensor, parts: int, name: str) -> tuple[torch.Tensor, ...]:
    if tensor.shape[0] % parts:
        raise WhisperConversionError(f"{name}: {tensor.shape[0]} rows cannot be split into {parts} projections")
    return tensor.chunk(parts, dim=0)


def _no_key_bias(bias: torch.Tensor, name: str) -> None:
    if torch.count_nonzero(bias):
        raise WhisperConversionError(
            f"{name} has a non-zero key bias, which Hugging Face's Whisper (k_proj without bias) cannot hold"
        )


def _linear(v: _Variables, source: str, target: str, out: dict) -> None:
    out[f"{target}.weight"] = v.take(f"{source}/weight")
    out[f"{target}.bias"] = v.take(f"{source}/bias")


def _layer_norm(v: _Variables, source: str, target: str, out: dict) -> None:
    out[f"{target}.weight"] = v.take(f"{source}/gamma")
    out[f"{target}.bias"] = v.take(f"{source}/beta")


def _self_attention(v: _Variables, source: str, target: str, out: dict) -> None:
    """Fused q,k,v (``linear_0``) and output (``linear_1``) to q_proj, k_proj, v_proj and out_proj."""
    q, k, val = _split_rows(v.take(f"{source}/linear_0/weight"), 3, f"{source}/linear_0/weight")
    q_bias, k_bias, v_bias = _split_rows(v.take(f"{source}/linear_0/bias"), 3, f"{source}/linear_0/bias")
    _no_key_bias(k_bias, f"{source}/linear_0/bias")
    out.update({f"{target}.q_proj.weight": q, f"{target}.q_proj.bias": q_bias, f"{target}.k_proj.weight": k,
                f"{target}.v_proj.weight": val, f"{target}.v_proj.bias": v_bias})
    _linear(v, f"{source}/linear_1", f"{target}.out_proj", out)


def _cross_attention(v: _Variables, source: str, target: str, out: dict) -> None:
    """Query (``linear_0``), fused k,v (``linear_1``) and output (``linear_2``)."""
    _linear(v, f"{source}/linear_0", f"{target}.q_proj", out)
    k, val = _split_rows(v.take(f"{source}/linear_1/weight"), 2, f"{source}/linear_1/weight")
    k_bias, v_bias = _split_rows(v.take(f"{source}/linear_1/bias"), 2, f"{source}/linear_1/bias")
    _no_key_bias(k_bias, f"{source}/linear_1/bias")
    out.update({f"{target}.k_proj.weight": k, f"{target}.v_proj.weight": val, f"{target}.v_proj.bias": v_bias})
    _linear(v, f"{source}/linear_2", f"{target}.out_proj", out)


def _feed_forward(v: _Variables, source: str, target: str, out: dict) -> None:
    _layer_norm(v, f"{source}/layer_norm", f"{target}.final_layer_norm", out)
    _linear(v, f"{source}/linear_0", f"{target}.fc1", out)
    _linear(v, f"{source}/linear_1", f"{target}.fc2", out)


def whisper_weights(model: CT2Model) -> tuple[dict[str, torch.Tensor], dict[str, int | bool]]:
    """Map every variable of ``model`` to a ``WhisperForConditionalGeneration`` state-dict entry.

    Returns the state dict (in the file's dtype) and the architecture read from it: layer and head
    counts, sizes and whether the output layer is tied to the token embedding. Raises
    `WhisperConversionError` for a missing, unexpected or unmappable variable.
    """
    v = _Variables(model)
    for name, expected in EXPECTED_FLAGS.items():
        if (value := v.scalar(name)) != expected:
            raise WhisperConversionError(f"{name} is {value}; Whisper has {expected}, so this is not a Whisper model")
    for name in UNUSED_SCALARS:
        v.scalar(name)
    shape = {
        "encoder_layers": v.layer_count("encoder"),
        "decoder_layers": v.layer_count("decoder"),
        "encoder_attention_heads": v.scalar("encoder/num_heads"),
        "decoder_attention_heads": v.scalar("decoder/num_heads"),
    }
    out: dict[str, torch.Tensor] = {}
    _linear(v, "encoder/conv1", "model.encoder.conv1", out)
    _linear(v, "encoder/conv2", "model.encoder.conv2", out)
    out["model.encoder.embed_positions.weight"] = v.take("encoder/position_encodings/encodings")
    for i in range(shape["encoder_layers"]):
        source, target = f"encoder/layer_{i}", f"model.encoder.layers.{i}"
        _layer_norm(v, f"{source}/self_attention/layer_norm", f"{target}.self_attn_layer_norm", out)
        _self_attention(v, f"{source}/self_attention", f"{target}.self_attn", out)
        _feed_forward(v, f"{source}/ffn", target, out)
    _layer_norm(v, "encoder/layer_norm", "model.encoder.layer_norm", out)

    out["model.decoder.embed_tokens.weight"] = v.take("decoder/embeddings/weight")
    out["model.decoder.embed_positions.weight"] = v.take("decoder/position_encodings/encodings")
    for i in range(shape["decoder_layers"]):
        source, target = f"decoder/layer_{i}", f"model.decoder.layers.{i}"
        _layer_norm(v, f"{source}/self_attention/layer_norm", f"{target}.self_attn_layer_norm", out)
        _self_attention(v, f"{source}/self_attention", f"{target}.self_attn", out)
        _layer_norm(v, f"{source}/attention/layer_norm", f"{target}.encoder_attn_layer_norm", out)
        _cross_attention(v, f"{source}/attention", f"{target}.encoder_attn", out)
        _feed_forward(v, f"{source}/ffn", target, out)
    _layer_norm(v, "decoder/layer_norm", "model.decoder.layer_norm", out)

    if v.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight":
        del v.aliases["decoder/projection/weight"]
        out["proj_out.weight"] = out["model.decoder.embed_tokens.weight"]
        shape["tie_word_embeddings"] = True
    else:
        out["proj_out.weight"] = v.take("decoder/projection/weight")
        shape["tie_word_embeddings"] = False
    v.finish()

    conv1 = out["model.encoder.conv1.weight"]
    shape.update(
        d_model=conv1.shape[0],
        num_mel_bins=conv1.shape[1],
        vocab_size=out["model.decoder.embed_tokens.weight"].shape[0],
        encoder_ffn_dim=out["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=out["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=out["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=out["model.decoder.embed_positions.weight"].shape[0],
    )
    return out, shape


def whisper_tokenizer(tokenizer_file: Path, vocab_size: int) -> WhisperTokenizerFast:
    """The tokenizer of ``tokenizer.json``, with the timestamp tokens the model's vocabulary ends with."""
    tokenizer = WhisperTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    missing = vocab_size - len(tokenizer)
    if missing not in (0, TIMESTAMPS):
        raise WhisperConversionError(
            f"{tokenizer_file} has {len(tokenizer)} tokens and the model {vocab_size}: only the "
            f"{TIMESTAMPS} timestamp tokens may be missing from the tokenizer"
        )
    if missing:
        timestamps = [AddedToken(f"<|{i * 0.02:.2f}|>", lstrip=False, rstrip=False) for i in range(TIMESTAMPS)]
        tokenizer.add_tokens(timestamps)
    tokenizer.model_max_length = 448
    return tokenizer


def _token_id(tokenizer: WhisperTokenizerFast, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise WhisperConversionError(f"the tokenizer has no {token} token")
    return token_id


def whisper_config(shape: dict, tokenizer: WhisperTokenizerFast, ct2_config: dict) -> tuple[WhisperConfig, GenerationConfig]:
    """The model and generation configs from the architecture, the tokenizer and CTranslate2's ``config.json``."""
    special = {
        "decoder_start_token_id": _token_id(tokenizer, "<|startoftranscript|>"),
        "bos_token_id": _token_id(tokenizer, "<|startoftranscript|>"),
        "eos_token_id": _token_id(tokenizer, "<|endoftext|>"),
        "pad_token_id": _token_id(tokenizer, "<|endoftext|>"),
    }
    suppress = {
        "suppress_tokens": list(ct2_config.get("suppress_ids", [])),
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin", [])),
    }
    config = WhisperConfig(**shape, **special, **suppress, activation_function="gelu", scale_embedding=False)
    multilingual = shape["vocab_size"] >= MULTILINGUAL_VOCAB
    generation = GenerationConfig(
        **special,
        **suppress,
        max_length=shape["max_target_positions"],
        is_multilingual=multilingual,
        no_timestamps_token_id=_token_id(tokenizer, "<|notimestamps|>"),
        prev_sot_token_id=_token_id(tokenizer, "<|startofprev|>"),
        max_initial_timestamp_index=50,
        return_timestamps=False,
        alignment_heads=[list(head) for head in ct2_config.get("alignment_heads", [])],
    )
    if multilingual:
        # CTranslate2 lists language ids only; English-only models have no language or task tokens to set.
        generation.lang_to_id = {tokenizer.convert_ids_to_tokens(i): i for i in ct2_config.get("lang_ids", [])}
        generation.task_to_id = {task: _token_id(tokenizer, f"<|{task}|>") for task in ("transcribe", "translate")}
    return config, generation


def convert_whisper_ct2(model_dir: str | Path, output_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Convert the CTranslate2 Whisper model in ``model_dir`` into a Hugging Face folder ``output_dir``.

    ``model_dir`` holds ``model.bin``, ``tokenizer.json`` and (optionally) ``config.json`` with
    suppress tokens, alignment heads and language ids. Weights are saved in ``dtype`` (float16 weights
    widen to float32 exactly). Returns ``output_dir``.
    """
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    weights, shape = whisper_weights(read_ct2_model(model_dir / "model.bin"))
    config_file = model_dir / "config.json"
    ct2_config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    tokenizer = whisper_tokenizer(model_dir / "tokenizer.json", shape["vocab_size"])
    config, generation = whisper_config(shape, tokenizer, ct2_config)

    model = WhisperForConditionalGeneration(config)
    model.load_state_dict({name: tensor.to(torch.float32) for name, tensor in weights.items()}, strict=True)
    model.generation_config = generation
    model.to(dtype).save_pretrained(output_dir)
    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=shape["num_mel_bins"]), tokenizer)
    processor.save_pretrained(output_dir)
    return output_dir
