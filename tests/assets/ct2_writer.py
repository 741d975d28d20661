"""Write CTranslate2 model files for tests: the binary format, and a WhisperSpec laid out from a HF Whisper.

The layout follows CTranslate2's own Whisper converter (fused q,k,v with a zero key bias, fused
cross-attention k,v, the output projection as an alias of the embedding), written independently of
the converter under test so that a round trip checks one against the other.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import WhisperForConditionalGeneration

DTYPE_IDS = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.float16: 4, torch.bfloat16: 5}
SPECIAL_TOKENS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                  "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]


def _string(value: str) -> bytes:
    raw = value.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_ct2_file(path: Path, variables: dict[str, torch.Tensor], aliases: dict[str, str] | None = None,
                   spec: str = "WhisperSpec", revision: int = 3, version: int = 6) -> None:
    """Write ``variables`` (in their dtypes) and ``aliases`` as a CTranslate2 ``model.bin``."""
    out = [struct.pack("<I", version), _string(spec), struct.pack("<I", revision), struct.pack("<I", len(variables))]
    for name, tensor in variables.items():
        data = tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
        out += [_string(name), struct.pack("<B", tensor.dim()), *(struct.pack("<I", d) for d in tensor.shape),
                struct.pack("<B", DTYPE_IDS[tensor.dtype]), struct.pack("<I", len(data)), data]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    path.write_bytes(b"".join(out))


def _scalar(value: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype)


def whisper_ct2_variables(model: WhisperForConditionalGeneration, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The WhisperSpec variables of ``model``'s weights, as CTranslate2's converter lays them out."""
    sd = {name: tensor.detach().to(dtype) for name, tensor in model.state_dict().items()}
    config = model.config
    variables: dict[str, torch.Tensor] = {}

    def linear(source: str, target: str) -> None:
        variables[f"{target}/weight"], variables[f"{target}/bias"] = sd[f"{source}.weight"], sd[f"{source}.bias"]

    def norm(source: str, target: str) -> None:
        variables[f"{target}/gamma"], variables[f"{target}/beta"] = sd[f"{source}.weight"], sd[f"{source}.bias"]

    def fused(source: str, target: str, parts: tuple[str, ...]) -> None:
        variables[f"{target}/weight"] = torch.cat([sd[f"{source}.{p}_proj.weight"] for p in parts])
        zero = torch.zeros(config.d_model, dtype=dtype)
        variables[f"{target}/bias"] = torch.cat([sd.get(f"{source}.{p}_proj.bias", zero) for p in parts])

    variables.update({
        "decoder/activation": _scalar(3, torch.int8), "decoder/alibi": _scalar(0, torch.int8),
        "decoder/alignment_heads": _scalar(1, torch.int16), "decoder/alignment_layer": _scalar(-1, torch.int16),
    })
    def layer(hf: str, ct: str, cross_attention: bool) -> None:
        norm(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
        fused(f"{hf}.self_attn", f"{ct}/self_attention/linear_0", ("q", "k", "v"))
        linear(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
        if cross_attention:
            norm(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
            linear(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
            fused(f"{hf}.encoder_attn", f"{ct}/attention/linear_1", ("k", "v"))
            linear(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
        norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
        linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
        linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")

    linear("model.encoder.conv1", "encoder/conv1")
    linear("model.encoder.conv2", "encoder/conv2")
    variables["encoder/position_encodings/encodings"] = sd["model.encoder.embed_positions.weight"]
    for i in range(config.encoder_layers):
        layer(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross_attention=False)
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    variables["encoder/num_heads"] = _scalar(config.encoder_attention_heads, torch.int16)

    variables["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    variables["decoder/position_encodings/encodings"] = sd["model.decoder.embed_positions.weight"]
    for i in range(config.decoder_layers):
        layer(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross_attention=True)
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    variables.update({
        "decoder/num_heads": _scalar(config.decoder_attention_heads, torch.int16),
        "decoder/pre_norm": _scalar(1, torch.int8), "decoder/scale_embeddings": _scalar(0, torch.int8),
        "decoder/start_from_zero_embedding": _scalar(0, torch.int8),
    })
    return dict(sorted(variables.items()))


TIED_OUTPUT = {"decoder/projection/weight": "decoder/embeddings/weight"}


def byte_level_tokenizer(path: Path) -> int:
    """Write a Whisper-like byte-level BPE ``tokenizer.json`` (256 byte tokens + specials); return its size."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokenizer = Tokenizer(models.BPE(vocab={char: i for i, char in enumerate(sorted(alphabet))}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.save(str(path))
    return tokenizer.get_vocab_size()


def write_ct2_whisper(folder: Path, model: WhisperForConditionalGeneration, dtype: torch.dtype = torch.float32,
                      config: dict | None = None) -> Path:
    """A CTranslate2 Whisper folder (``model.bin``, ``config.json``, ``tokenizer.json``) holding ``model``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_ct2_file(folder / "model.bin", whisper_ct2_variables(model, dtype), TIED_OUTPUT)
    (folder / "config.json").write_text(json.dumps(config or {}))
    byte_level_tokenizer(folder / "tokenizer.json")
    return folder
